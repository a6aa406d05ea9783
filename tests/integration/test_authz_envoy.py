"""End to end in authz mode: client -> real Envoy (envoy/envoy-authz.yaml: ext_authz with the
body, gRPC access log) -> `llm-picker serve --mode authz` -> simulated engines. The same
promises as the ext_proc mode: routing, OpenAI errors, cancellation, in-flight accounting."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet
from tests.integration.conftest import (
    FAST_HEALTH,
    MODEL,
    SIM_HEADER,
    in_flight_mid_stream,
    metric_values,
    total_in_flight,
    wait_until,
)
from tests.integration.test_envoy_routing import (
    MESSAGES,
    _stream_then_maybe_cancel,
    assert_method_and_encoding_named,
    client_for,
    served_by,
)


@pytest.fixture(scope="module")
def authz_fleet() -> Iterator[Fleet]:
    sims = [
        SimSpec("sim-a", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-b", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-c", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-solo", "solo-model"),
    ]
    with local_fleet(sims, policy="round_robin", picker_settings=FAST_HEALTH,
                     authz=True) as fleet:
        yield fleet


def outcome(fleet: Fleet, name: str) -> float:
    return metric_values(fleet, "llm_picker_requests_total").get((("outcome", name),), 0.0)


def test_round_robin_spreads_evenly_streaming_and_not(authz_fleet: Fleet) -> None:
    client = client_for(authz_fleet)
    served = Counter(served_by(client, stream=i % 2 == 0) for i in range(30))
    assert served == {"sim-a": 10, "sim-b": 10, "sim-c": 10}
    wait_until(lambda: total_in_flight(authz_fleet) == 0, what="in-flight back to 0")


def test_client_sent_routing_headers_are_overwritten(authz_fleet: Fleet) -> None:
    sim_a = authz_fleet.sims["sim-a"].port
    client = client_for(authz_fleet, default_headers={
        "x-gateway-destination-endpoint": f"127.0.0.1:{sim_a}",
        "x-llm-picker-lease": "0" * 24})
    served = Counter(served_by(client, stream=False) for _ in range(9))
    assert served == {"sim-a": 3, "sim-b": 3, "sim-c": 3}


def test_unknown_model_is_404_with_openai_error(authz_fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(authz_fleet).chat.completions.create(model="no-such-model",
                                                         messages=MESSAGES)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"


def test_bad_body_is_400_with_json_error(authz_fleet: Fleet) -> None:
    response = loopback().post(f"{authz_fleet.envoy_url}/v1/chat/completions",
                               content=b"{this is not json",
                               headers={"content-type": "application/json"}, timeout=5.0)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "invalid JSON" in response.json()["error"]["message"]


def test_the_model_list_is_answered_by_the_picker_as_in_ext_proc_mode(
        authz_fleet: Fleet) -> None:
    client = client_for(authz_fleet)
    assert sorted(m.id for m in client.models.list()) == [MODEL, "solo-model"]
    assert client.models.retrieve("solo-model").id == "solo-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    head = loopback().head(f"{authz_fleet.envoy_url}/v1/models", timeout=5.0)
    assert head.status_code == 200 and head.headers["content-type"] == "application/json"
    # Other methods are checked like any path the picker does not route, as in ext_proc mode.
    posted = loopback().post(f"{authz_fleet.envoy_url}/v1/models", json={}, timeout=5.0)
    assert posted.status_code == 404 and posted.json()["error"]["code"] == "unsupported_path"
    # Only a bodiless GET skips the check: with a body it is checked, and bounded there.
    huge = loopback().request("GET", f"{authz_fleet.envoy_url}/v1/models", content=b"x" * 9_000_000,
                              timeout=10.0)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


def test_wrong_method_and_compressed_bodies_are_named(authz_fleet: Fleet) -> None:
    assert_method_and_encoding_named(authz_fleet.envoy_url)


def test_in_flight_spans_the_response_and_returns_to_zero(authz_fleet: Fleet) -> None:
    assert in_flight_mid_stream(authz_fleet, MESSAGES, max_tokens=100) == 1.0
    wait_until(lambda: total_in_flight(authz_fleet) == 0, what="in-flight back to 0")


def test_cancelled_streams_are_released_after_the_access_log_flush(authz_fleet: Fleet) -> None:
    cancelled_before = outcome(authz_fleet, "cancelled")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=authz_fleet.envoy_url,
                                     limits=httpx.Limits(max_connections=30),
                                     timeout=10.0) as client:
            return await asyncio.gather(*(_stream_then_maybe_cancel(client, cancel=i % 2 == 0)
                                          for i in range(24)))

    assert asyncio.run(burst()) == [200] * 24
    wait_until(lambda: total_in_flight(authz_fleet) == 0, what="in-flight back to 0")
    assert outcome(authz_fleet, "cancelled") - cancelled_before >= 1


def test_dead_worker_gets_503_with_a_json_error(authz_fleet: Fleet) -> None:
    """Envoy's ext_authz HTTP client takes any 5xx answer for a failed check, not a denial: the
    client gets Envoy's own 503 (status_on_error, made JSON by local_reply_config), not the
    picker's message. Pinned so an Envoy that forwards 5xx denials shows up here."""
    client = client_for(authz_fleet)
    assert served_by(client, stream=False, model="solo-model") == "sim-solo"
    authz_fleet.processes["sim-sim-solo"].kill()
    wait_until(lambda: metric_values(authz_fleet, "llm_picker_worker_healthy").get(
        (("worker", "sim-solo"),)) == 0.0, what="sim-solo marked unhealthy")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="solo-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "ext_authz_error"


def test_over_the_limit_is_shed_with_429_and_retry_after() -> None:
    sims = [SimSpec("slow", MODEL, ["--ttft-ms", "5", "--tpot-ms", "20"])]
    settings = {"limits": {"max_concurrent_requests": 1}}
    with local_fleet(sims, policy="round_robin", picker_settings=settings,
                     authz=True) as fleet:
        async def one_streaming_one_shed() -> httpx.Response:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10.0) as client:
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 30, "stream": True}
                async with client.stream("POST", "/v1/chat/completions", json=body) as held:
                    lines = held.aiter_lines()
                    await anext(lines)
                    shed = await client.post("/v1/chat/completions", json={
                        "model": MODEL, "messages": MESSAGES, "max_tokens": 2})
                    async for _ in lines:
                        pass
                return shed

        shed = asyncio.run(one_streaming_one_shed())
        assert shed.status_code == 429
        assert shed.headers.get("retry-after") == "1"
        assert json.loads(shed.content)["error"]["type"]
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")
        # The slot came back with the access log: the next request is admitted.
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=5.0,
                                   json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
        assert response.status_code == 200 and response.headers[SIM_HEADER] == "slow"


def test_upstream_failure_releases_the_slot_as_an_error() -> None:
    sims = [SimSpec("broken", MODEL, ["--failure-rate", "1"])]
    with local_fleet(sims, policy="round_robin", authz=True) as fleet:
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=5.0,
                                   json={"model": MODEL, "messages": MESSAGES})
        assert response.status_code == 500 and response.headers[SIM_HEADER] == "broken"
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")
        assert outcome(fleet, "upstream_error") == 1.0
