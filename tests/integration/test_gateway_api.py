"""Gateway API inference gateways' Envoy configurations in front of the picker (issue 14).

envoy/envoy-gateway.yaml is what Envoy (AI) Gateway generates for an InferencePool: TLS to the
picker (here its self-signed certificate), request and response bodies FULL_DUPLEX_STREAMED.
envoy/envoy-gateway-metadata.yaml routes on the `envoy.lb` metadata with fallbacks and reports
the served endpoint. Real Envoy, real picker process, simulated engines, the openai client.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llm_picker.envoy_config import ext_proc_config
from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_DIR, ENVOY_GATEWAY, Fleet, SimSpec, free_port, local_fleet
from tests.integration.conftest import (
    FAST_HEALTH,
    MODEL,
    SIM_HEADER,
    in_flight_mid_stream,
    metric_values,
    total_in_flight,
    wait_until,
)

METADATA = ENVOY_DIR / "envoy-gateway-metadata.yaml"
MESSAGES = [{"role": "user", "content": "say something"}]
SUBSET_HEADER = "x-test-subset"  # the test's stand-in for a gateway setting the subset hint
TTFT_MS = 150.0


def picker_port(fleet: Fleet) -> int:
    config = yaml.safe_load((fleet.workdir / "picker.yaml").read_text())
    port: int = config["extproc"]["port"]
    return port


def client_for(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="unused", max_retries=0)


def per_worker(fleet: Fleet, name: str, **labels: str) -> dict[str, float]:
    return {dict(key)["worker"]: value for key, value in metric_values(fleet, name).items()
            if all(dict(key).get(k) == v for k, v in labels.items())}


@pytest.fixture(scope="module")
def gateway_fleet() -> Iterator[Fleet]:
    """Two sims behind round robin, the picker over self-signed TLS, AI-Gateway-style Envoy."""
    sims = [SimSpec(worker_id, MODEL, ["--ttft-ms", str(TTFT_MS), "--tpot-ms", "2"])
            for worker_id in ("sim-a", "sim-b")]
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH}) as fleet:
        yield fleet


def test_chat_and_completions_streaming_and_not_spread_evenly_without_errors(
        gateway_fleet: Fleet) -> None:
    client = client_for(gateway_fleet)
    served: Counter[str] = Counter()
    for i in range(100):
        stream, chat = i % 2 == 0, (i // 2) % 2 == 0
        if chat:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=3, stream=stream)  # type: ignore[arg-type]
        else:
            raw = client.completions.with_raw_response.create(
                model=MODEL, prompt="Once", max_tokens=3, stream=stream)
        parsed: Any = raw.parse()
        text = "".join(
            (c.choices[0].delta.content or "") if chat else c.choices[0].text
            for c in parsed if c.choices
        ) if stream else (parsed.choices[0].message.content if chat else parsed.choices[0].text)
        assert text
        served[raw.headers[SIM_HEADER]] += 1
    assert served == {"sim-a": 50, "sim-b": 50}
    wait_until(lambda: total_in_flight(gateway_fleet) == 0, what="in-flight back to 0")
    outcomes = metric_values(gateway_fleet, "llm_picker_requests_total")
    assert outcomes.get((("outcome", "completed"),), 0) >= 100


def test_200_chunk_stream_arrives_as_the_engine_sent_it(gateway_fleet: Fleet) -> None:
    """The same request straight to the engine and through Envoy + picker: identical bytes once
    the two per-request fields (id counter, created second) are normalised."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True}

    def normalised(url: str) -> tuple[bytes, str]:
        with loopback().stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            raw = r.read()
            worker = r.headers[SIM_HEADER]
        raw = re.sub(rb'"id": "chatcmpl-[^"]+"', b'"id": "ID"', raw)
        return re.sub(rb'"created": \d+', b'"created": 0', raw), worker

    through, worker = normalised(gateway_fleet.envoy_url)
    direct, _ = normalised(gateway_fleet.sim_url(worker))
    assert through == direct
    assert through.count(b"data: ") == 200 + 3  # tokens, finish, usage, [DONE]


def test_cancel_mid_stream_releases_the_slot(gateway_fleet: Fleet) -> None:
    # The slot spans the response now, not only the request.
    assert in_flight_mid_stream(gateway_fleet, MESSAGES, max_tokens=2000, finish=False) == 1.0
    wait_until(lambda: total_in_flight(gateway_fleet) == 0, what="in-flight back to 0")
    outcomes = metric_values(gateway_fleet, "llm_picker_requests_total")
    assert outcomes.get((("outcome", "cancelled"),), 0) >= 1


def test_observed_ttft_and_usage_match_what_the_engine_sent(gateway_fleet: Fleet) -> None:
    before = per_worker(gateway_fleet, "llm_picker_worker_tokens_total", kind="completion")
    ttft_before = per_worker(gateway_fleet, "llm_picker_worker_ttft_seconds_count")
    sum_before = per_worker(gateway_fleet, "llm_picker_worker_ttft_seconds_sum")
    client = client_for(gateway_fleet)
    sent: Counter[str] = Counter()
    for max_tokens in (5, 7, 11, 13):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=max_tokens, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        usage = [c.usage for c in raw.parse() if c.usage is not None]
        sent[raw.headers[SIM_HEADER]] += usage[-1].completion_tokens
    wait_until(lambda: total_in_flight(gateway_fleet) == 0, what="in-flight back to 0")
    after = per_worker(gateway_fleet, "llm_picker_worker_tokens_total", kind="completion")
    assert {w: after[w] - before.get(w, 0) for w in after} == sent
    count = per_worker(gateway_fleet, "llm_picker_worker_ttft_seconds_count")
    total = per_worker(gateway_fleet, "llm_picker_worker_ttft_seconds_sum")
    for worker in sent:
        n = count[worker] - ttft_before.get(worker, 0)
        mean = (total[worker] - sum_before.get(worker, 0)) / n
        assert n == 2 and TTFT_MS / 1000 <= mean < TTFT_MS / 1000 + 0.1


def test_grpc_health_services_over_the_self_signed_tls(gateway_fleet: Fleet) -> None:
    port = picker_port(gateway_fleet)
    certificate = ssl.get_server_certificate(("127.0.0.1", port)).encode()

    def check(service: str) -> int:
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate)
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            try:
                status: int = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=5).status
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.NOT_FOUND
                return -1
            return status

    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
        assert check(service) == serving
    assert check("no-such-service") == -1
    # Readiness follows the workers: none routable -> NOT_SERVING, liveness unaffected.
    for worker in ("sim-a", "sim-b"):
        loopback().post(f"{gateway_fleet.sim_url(worker)}/sim/control", json={"health_status": 503})
    try:
        wait_until(lambda: check("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING,
                   what="readiness NOT_SERVING")
        assert check("envoy.service.ext_proc.v3.ExternalProcessor") != serving
        assert check("liveness") == serving
    finally:
        for worker in ("sim-a", "sim-b"):
            loopback().post(f"{gateway_fleet.sim_url(worker)}/sim/control",
                            json={"health_status": 200})
    wait_until(lambda: check("readiness") == serving, what="readiness SERVING again")


# -- the metadata-driven configuration: subset hint, fallbacks, served endpoint ----------------

def metadata_template(tmp: Path, ports: list[int]) -> Path:
    """envoy-gateway-metadata.yaml with the sims as the pool and a test-only way to send the
    gateway's subset hint (a request header copied into the envoy.lb.subset_hint metadata)."""
    config: dict[str, Any] = yaml.safe_load(METADATA.read_text())
    pool = next(c for c in config["static_resources"]["clusters"] if c["name"] == "llm_pool")
    pool["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports]
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    manager["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3"
                     ".Config",
            "request_rules": [{"header": SUBSET_HEADER, "remove": True, "on_header_present": {
                "metadata_namespace": "envoy.lb.subset_hint",
                "key": "x-gateway-destination-endpoint-subset", "type": "STRING"}}]}})
    path = tmp / "envoy-gateway-metadata.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def metadata_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    sims = [SimSpec(worker_id, MODEL, ["--ttft-ms", "5", "--tpot-ms", "20"], port=free_port())
            for worker_id in ("sim-a", "sim-b", "sim-c")]
    template = metadata_template(tmp_path_factory.mktemp("envoy"), [s.port for s in sims])
    # No active health checks: the picker keeps choosing a dead engine, Envoy's retry covers.
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=template,
                     picker_settings={"extproc": {"fallbacks": 1},
                                      "health": {"enabled": False}}) as fleet:
        yield fleet


def test_subset_hint_is_honoured_and_an_empty_subset_is_503(metadata_fleet: Fleet) -> None:
    only_c = f"127.0.0.1:{metadata_fleet.sims['sim-c'].port}"
    client = client_for(metadata_fleet)
    served = Counter(
        client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=2,  # type: ignore[arg-type]
            extra_headers={SUBSET_HEADER: only_c}).headers[SIM_HEADER]
        for _ in range(6))
    assert served == {"sim-c": 6}
    for subset in (",", "10.1.2.3:8000"):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                           max_tokens=2, extra_headers={SUBSET_HEADER: subset})
        assert caught.value.status_code == 503
    wait_until(lambda: total_in_flight(metadata_fleet) == 0, what="in-flight back to 0")


def test_fallback_serves_when_the_primary_is_dead_and_the_lease_follows(
        metadata_fleet: Fleet) -> None:
    metadata_fleet.processes["sim-sim-a"].kill()
    tokens_before = per_worker(metadata_fleet, "llm_picker_worker_tokens_total", kind="completion")

    async def stream_once() -> tuple[str, dict[str, float]]:
        async with httpx.AsyncClient(base_url=metadata_fleet.envoy_url, timeout=10) as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 30, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                await anext(lines)
                loads = await asyncio.to_thread(
                    per_worker, metadata_fleet, "llm_picker_worker_in_flight")
                async for _ in lines:
                    pass
                return response.headers[SIM_HEADER], loads

    # Round robin over three: within three requests the dead engine is the primary once.
    primaries = []
    for _ in range(3):
        before = per_worker(metadata_fleet, "llm_picker_decisions_total").get("sim-a", 0)
        served, loads = asyncio.run(stream_once())
        chose_a = per_worker(metadata_fleet, "llm_picker_decisions_total")["sim-a"] > before
        primaries.append(chose_a)
        assert loads["sim-a"] == 0 and loads[served] == 1  # the slot sits where it is served
        # The picker's list was `sim-a,sim-b` (fallbacks least loaded first, ties by id):
        # Envoy's retry took its second entry, not a host of its own choosing.
        assert served == ("sim-b" if chose_a else served) and served != "sim-a"
    assert primaries.count(True) == 1
    wait_until(lambda: total_in_flight(metadata_fleet) == 0, what="in-flight back to 0")
    tokens = per_worker(metadata_fleet, "llm_picker_worker_tokens_total", kind="completion")
    assert tokens.get("sim-a", 0) == tokens_before.get("sim-a", 0)
    assert sum(tokens.values()) - sum(tokens_before.values()) == 3 * 30


def test_buffered_both_ways_works_too(tmp_path: Path) -> None:
    """The gateways' "buffered" option: request and response bodies BUFFERED."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_GATEWAY.read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [ext_proc] = [ext for f in manager["typed_config"]["http_filters"]
                  if (ext := ext_proc_config(f)) is not None]
    ext_proc["processing_mode"].update(request_body_mode="BUFFERED", response_body_mode="BUFFERED")
    template = tmp_path / "envoy-gateway-buffered.yaml"
    template.write_text(yaml.safe_dump(config))
    sims = [SimSpec("sim-a", MODEL), SimSpec("sim-b", MODEL)]
    with local_fleet(sims, policy="round_robin", body_mode="BUFFERED", envoy_template=template,
                     picker_settings={"extproc": {"tls": "self_signed"}}) as fleet:
        client = client_for(fleet)
        served: Counter[str] = Counter()
        for i in range(10):
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=4, stream=i % 2 == 0)  # type: ignore[arg-type]
            parsed: Any = raw.parse()
            if i % 2 == 0:
                assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
            else:
                assert parsed.choices[0].message.content
            served[raw.headers[SIM_HEADER]] += 1
        assert served == {"sim-a": 5, "sim-b": 5}
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")
        tokens = per_worker(fleet, "llm_picker_worker_tokens_total", kind="completion")
        assert tokens == {"sim-a": 20.0, "sim-b": 20.0}
