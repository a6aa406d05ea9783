"""picker.routing.hops: the hop list a routed request carries, and the loops it refuses."""

from __future__ import annotations

import pytest

from picker.errors import RoutingLoop
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.pd.pairing import PairStep
from picker.routing import hops
from picker.routing.control_headers import HOP
from picker.routing.request import Api, RoutingRequest
from tests.http_stub import StubServer

OTHER = "0123456789ab"


def test_a_first_visit_passes_and_is_appended_to_what_came() -> None:
    hops.check({})
    assert hops.onward({}) == hops.TOKEN
    hops.check({HOP: OTHER})
    assert hops.onward({HOP: OTHER}) == f"{OTHER},{hops.TOKEN}"


def test_coming_back_is_refused_wherever_the_token_sits_in_the_list() -> None:
    for came in (hops.TOKEN, f"{hops.TOKEN},{OTHER}", f"{OTHER},{hops.TOKEN},{OTHER}"):
        with pytest.raises(RoutingLoop, match="already passed this picker"):
            hops.check({HOP: came})


def test_too_many_pickers_is_a_loop_and_junk_does_not_count() -> None:
    many = ",".join(f"{i:012x}" for i in range(hops.MAX_HOPS))
    with pytest.raises(RoutingLoop, match=f"passed {hops.MAX_HOPS} pickers"):
        hops.check({HOP: many})
    junk = "," * 50 + "x" * 5000
    hops.check({HOP: junk})  # no well-formed token: a first visit
    assert hops.onward({HOP: junk}) == hops.TOKEN
    assert len(hops.onward({HOP: ",".join([OTHER] * 1000)})) <= 13 * hops.MAX_HOPS + 12


async def test_the_pickers_own_prefill_call_carries_the_hop_list() -> None:
    """A pair's prefill call goes out from the picker, not through the proxy: it carries the
    list itself, so a prefill worker that is the proxy sends it back to a refusal."""
    stub = StubServer()
    registry = WorkerRegistry()
    prefill, decode = (registry.add(WorkerSpec.model_validate(
        {"url": url, "id": role, "worker_type": role, "models": ["m"]}))
        for role, url in (("prefill", stub.url), ("decode", "http://127.0.0.1:9")))
    pairs = PairStep(registry, PickerMetrics(registry), 5.0)
    try:
        await pairs.forward(RoutingRequest(model="m", api=Api.CHAT, body={"model": "m"},
                                           headers={HOP: OTHER}), prefill, decode)
    finally:
        await pairs.close()
        stub.close()
    [(_, headers, _)] = stub.posts
    assert headers[HOP] == f"{OTHER},{hops.TOKEN}"
