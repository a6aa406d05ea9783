"""The authz adapter without Envoy: checks into leases, access-log entries into releases, and
the HTTP/1.1 framing Envoy's ext_authz client uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from authz._pb import als_pb2 as pb
from authz.als import AccessLogService
from authz.check import Checker
from authz.http import _Connection, serve_http
from authz.tokens import LEASE_HEADER
from picker.config import PickerConfig
from picker.fleet.worker_spec import WorkerSpec
from picker.listen import listen_socket
from picker.routing import control_headers
from picker.runtime import PickerRuntime

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
PATH = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


# Each checker's runtime, for reading the fleet the checker's Picker routes over.
RUNTIME_OF: dict[Checker, PickerRuntime] = {}


def checker(*urls: str, **settings: object) -> Checker:
    specs = [WorkerSpec(url=u, models=["m"]) for u in urls or ("http://10.0.0.1:8000",)]
    runtime = PickerRuntime(PickerConfig.model_validate({"workers": specs, **settings}))
    check = Checker(runtime.routing, max_body_bytes=1024)
    RUNTIME_OF[check] = runtime
    return check


def in_flight(check: Checker) -> int:
    return sum(w.in_flight for w in RUNTIME_OF[check].registry.workers())


def log_entry(token: str, status: int = 200, client_gone: bool = False) -> pb.HTTPAccessLogEntry:
    entry = pb.HTTPAccessLogEntry()
    entry.request.request_headers[LEASE_HEADER] = token
    entry.response.response_code.value = status
    entry.common_properties.response_flags.downstream_connection_termination = client_gone
    return entry


def batch(*entries: pb.HTTPAccessLogEntry) -> pb.StreamAccessLogsMessage:
    message = pb.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(entries)
    return message


def test_allow_sets_destination_and_a_lease_token_and_removes_a_client_rank() -> None:
    check = checker()
    answer = check.check(PATH, dict(JSON), BODY)
    headers = dict(answer.headers)
    assert answer.status == 200
    assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert len(headers[LEASE_HEADER]) == 24  # 12 random bytes: not guessable by a client
    # Every control header the answer does not set, a client's rank among them.
    assert headers["x-envoy-auth-headers-to-remove"].split(",") == [
        name for name in control_headers.STRIPPED
        if name not in ("x-gateway-destination-endpoint", LEASE_HEADER)]
    assert in_flight(check) == 1


@pytest.mark.parametrize(("path", "body", "headers", "status"), [
    (PATH, b"{bad", JSON, 400),
    (PATH, json.dumps({"model": "nope", "messages": []}).encode(), JSON, 404),
    ("/v1/other", BODY, JSON, 404),
    (PATH, BODY, {"content-type": "text/plain"}, 415),
    (PATH, b" " * 2048, JSON, 413),
])
def test_denials_carry_the_status_and_the_openai_error(path: str, body: bytes,
                                                       headers: dict[str, str],
                                                       status: int) -> None:
    check = checker()
    answer = check.check(path, dict(headers), body)
    assert answer.status == status
    assert ("content-type", "application/json") in answer.headers
    assert "message" in json.loads(answer.body)["error"]
    assert in_flight(check) == 0 and check.open_leases == 0


def test_overload_is_a_429_with_retry_after() -> None:
    check = checker(limits={"max_concurrent_requests": 1})
    assert check.check(PATH, dict(JSON), BODY).status == 200
    answer = check.check(PATH, dict(JSON), BODY)
    assert answer.status == 429
    assert any(name.lower() == "retry-after" for name, _ in answer.headers)


@pytest.mark.parametrize(("status", "client_gone", "outcome"), [
    (200, False, "completed"), (200, True, "cancelled"), (0, True, "cancelled"),
    (503, False, "upstream_error"),
])
def test_an_access_log_entry_releases_its_lease_once(status: int, client_gone: bool,
                                                     outcome: str) -> None:
    check = checker()
    token = dict(check.check(PATH, dict(JSON), BODY).headers)[LEASE_HEADER]
    service = AccessLogService(check)
    assert service.consume(batch(log_entry(token, status, client_gone))) == 1
    assert service.consume(batch(log_entry(token))) == 0  # a replay changes nothing
    assert in_flight(check) == 0
    assert RUNTIME_OF[check].leases.outcomes == {outcome: 1}


def test_unknown_and_missing_tokens_are_ignored() -> None:
    check = checker()
    check.check(PATH, dict(JSON), BODY)
    service = AccessLogService(check)
    assert service.consume(batch(log_entry("guessed"), pb.HTTPAccessLogEntry())) == 0
    assert in_flight(check) == 1


def test_a_batch_releases_every_request_it_reports() -> None:
    check = checker("http://10.0.0.1:8000", "http://10.0.0.2:8000")
    tokens = [dict(check.check(PATH, dict(JSON), BODY).headers)[LEASE_HEADER]
              for _ in range(10)]
    assert in_flight(check) == 10
    wire = batch(*(log_entry(t) for t in tokens)).SerializeToString()
    assert AccessLogService(check).consume(pb.StreamAccessLogsMessage.FromString(wire)) == 10
    assert in_flight(check) == 0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True


def _request(body: bytes = BODY) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: picker\r\ncontent-type: "
            b"application/json\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


async def test_http_answers_requests_split_and_back_to_back_in_order() -> None:
    check = checker()
    connection, transport = _Connection(check, awaits=False), _Transport()
    connection.connection_made(transport)
    wire = _request() + _request(b"{bad")
    for i in range(0, len(wire), 7):  # arbitrary segmentation
        connection.data_received(wire[i:i + 7])
    first, second = transport.out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and b"x-gateway-destination-endpoint: " in first
    assert second.startswith(b"400 ") and second.endswith(b"}")
    assert not transport.closed


async def test_http_refuses_what_envoy_never_sends() -> None:
    connection, transport = _Connection(checker(), awaits=False), _Transport()
    connection.connection_made(transport)
    connection.data_received(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
    assert transport.out.startswith(b"HTTP/1.1 400 ") and transport.closed


async def test_http_refuses_a_body_over_the_limit_before_buffering_it() -> None:
    """A client's GET /v1/models reaches this server without Envoy's max_request_bytes: the
    declared length alone decides, so a 2 GB promise costs nothing."""
    connection, transport = _Connection(checker(), awaits=False), _Transport()
    connection.connection_made(transport)
    connection.data_received(b"GET /v1/models HTTP/1.1\r\nx-llm-picker-direct: models\r\n"
                             b"content-length: 2000000000\r\n\r\n" + b"x" * 4096)
    assert transport.out.startswith(b"HTTP/1.1 413 Payload Too Large\r\n") and transport.closed
    assert b'"body_too_large"' in transport.out
    assert len(connection._buffer) <= 8192


async def test_http_answers_the_model_list_sent_straight_to_it() -> None:
    connection, transport = _Connection(checker(), awaits=False), _Transport()
    connection.connection_made(transport)
    connection.data_received(b"GET /v1/models HTTP/1.1\r\nx-llm-picker-direct: models\r\n\r\n")
    assert transport.out.startswith(b"HTTP/1.1 200 OK\r\n") and not transport.closed
    assert json.loads(transport.out.split(b"\r\n\r\n", 1)[1])["object"] == "list"


def test_a_health_probe_is_allowed_to_a_routable_worker_without_a_lease() -> None:
    """Issue 31 item 11 (picker.routing.gateway_probes), as in ext_proc mode."""
    check = checker("http://10.0.0.1:8000", "http://10.0.0.2:8000")
    registry = RUNTIME_OF[check].registry  # the test sets a worker's health
    registry.set_healthy(registry.workers()[0], False)
    answer = check.check("/health", {":method": "GET"}, b"")
    headers = dict(answer.headers)
    assert (answer.status, headers["x-gateway-destination-endpoint"]) == (200, "10.0.0.2:8000")
    assert LEASE_HEADER not in headers and in_flight(check) == 0
    registry.set_healthy(registry.workers()[1], False)
    assert check.check("/health", {":method": "GET"}, b"").status == 503
    assert check.check("/health", {":method": "POST"}, b"").status == 404


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_http_closes_a_request_left_unfinished_but_not_an_idle_keep_alive() -> None:
    """On a real socket: part of a request is closed after the head timeout; a connection
    that finished its request may idle (Envoy pools it) up to the idle timeout."""
    sock = listen_socket("127.0.0.1", 0, "authz HTTP")
    server = await serve_http(checker(), awaits=False, sock=sock, head_timeout_secs=0.3,
                              idle_timeout_secs=1.5)
    port = sock.getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request()[:20])
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, nothing answered
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request())
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(0.6)
        writer.write(_request())
        assert (await asyncio.wait_for(reader.readuntil(b"HTTP/1.1 200 "), 2))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)  # the rest of its head
        # Idle past the idle timeout: closed (anyone could otherwise hold descriptors).
        rest = await asyncio.wait_for(reader.read(), 4)
        assert b"HTTP/1.1" not in rest and reader.at_eof()
        writer.close()
        # Dribbling a request does not extend its head timeout (0.3 s from the first byte).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in _request()[:20]:  # 2 s of dribbling if nobody closed it
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        try:
            rest = await asyncio.wait_for(reader.read(), 2)
        except ConnectionError:  # the close came while a byte was on its way
            rest = b""
        assert rest == b"" and time.monotonic() - started < 1.2
        writer.close()
    finally:
        server.close()


def test_a_health_probe_to_a_keyed_rank_carries_what_a_request_would() -> None:
    """The probe reaches its worker as a routed request does (its key, its rank), in authz
    mode as in ext_proc mode (review finding: only the destination was set here)."""
    check = checker(extproc={"allow_unauthenticated_keys": True}, workers=[{
        "url": "http://10.0.0.1:8000@1", "dp_size": 2, "models": ["m"], "api_key": "sk-engine"}])
    answer = check.check("/health", {":method": "GET"}, b"")
    headers = dict(answer.headers)
    assert answer.status == 200 and headers["authorization"] == "Bearer sk-engine"
    assert headers[control_headers.DP_RANK] == "1"
