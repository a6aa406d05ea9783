"""Routing answers remove every control header they do not set, whatever was set before: the
removal lists are built once per set of written headers, so a list kept for the wrong set
would pass a client's header on (or drop one the picker set)."""

from __future__ import annotations

import pytest

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from picker.routing import control_headers

_AT = "10.0.0.1:8000"


def _route(*headers: tuple[str, str]) -> codec.Route:
    return codec.Route(_AT, ((control_headers.DESTINATION, _AT), *headers))


ROUTES = [
    _route(),
    _route((control_headers.DP_RANK, "2")),
    _route(("authorization", "Bearer sk-w")),
    _route((control_headers.DP_RANK, "1"), ("authorization", "Bearer sk-w"),
           (control_headers.PREFILLER, "10.0.0.2:8000")),
]


def _written_and_removed(route: codec.Route) -> tuple[set[str], list[str]]:
    mutation: pb.HeaderMutation = codec.route_headers(route).request_headers.response \
        .header_mutation
    return {option.header.key for option in mutation.set_headers}, list(mutation.remove_headers)


@pytest.mark.parametrize("order", [ROUTES, ROUTES[::-1]], ids=["forward", "reverse"])
def test_each_answer_removes_exactly_the_control_headers_it_does_not_set(
        order: list[codec.Route]) -> None:
    for route in [*order, *order]:  # the second round reads the kept lists
        written, removed = _written_and_removed(route)
        assert removed == [name for name in control_headers.STRIPPED if name not in written]
        assert codec.DESTINATION_HEADER in written


def test_the_buffered_headers_answer_removes_every_control_header() -> None:
    first, second = codec.continue_headers(), codec.continue_headers()
    for answer in (first, second):
        assert list(answer.request_headers.response.header_mutation.remove_headers) == list(
            control_headers.STRIPPED)


def test_a_kept_buffered_answer_routes_each_request_to_its_own_route() -> None:
    """BUFFERED routing answers are kept per route: each must still carry its own route's
    destination and headers, and a rewritten body (a prefill/decode pair's) is never kept."""
    for route in [*ROUTES, *ROUTES]:
        answer = codec.route_buffered(route).request_body.response
        assert {(o.header.key, o.header.raw_value.decode())
                for o in answer.header_mutation.set_headers} == set(route.headers)
        assert answer.clear_route_cache and not answer.HasField("body_mutation")
    rewritten = [codec.route_buffered(ROUTES[0], body) for body in (b"{}", b'{"a": 1}')]
    assert [r.request_body.response.body_mutation.body for r in rewritten] == [b"{}",
                                                                             b'{"a": 1}']
    assert codec.route_buffered(ROUTES[0]) is codec.route_buffered(_route())
