"""Fixtures that run real processes: simulated engines, `llm-picker serve`, the envoy binary."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet
from tests.waiting import wait_until as wait_until  # where the integration tests import it from

SIM_HEADER = "x-picker-sim-worker"
MODEL = "sim-model"

# Fast health checks so tests see ejection in well under a second.
FAST_HEALTH = {"health": {"interval_secs": 0.1, "timeout_secs": 0.5, "failure_threshold": 1,
                          "success_threshold": 1}}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Certificates made at test time (trustme): a CA, the picker's server certificate for
    llm-picker.local, a client certificate for Envoy; file name -> path."""
    root = Path(tmp_path_factory.mktemp("pki"))
    ca = trustme.CA()
    server = ca.issue_cert("llm-picker.local", "127.0.0.1")
    client = ca.issue_cert("envoy.local")
    files = {"ca.pem": ca.cert_pem, "server.pem": server.cert_chain_pems[0],
             "server.key": server.private_key_pem, "envoy-client.pem": client.cert_chain_pems[0],
             "envoy-client.key": client.private_key_pem}
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(str(root / name))
        paths[name] = str(root / name)
    return paths


def mtls_settings(pki: dict[str, str]) -> dict[str, object]:
    """Picker settings for ext_proc over mutual TLS (Envoy side: envoy/envoy-mtls.yaml)."""
    return {"extproc": {"tls": {"cert_file": pki["server.pem"], "key_file": pki["server.key"],
                                "client_ca_file": pki["ca.pem"]}}}


@pytest.fixture(scope="module", params=["BUFFERED", "FULL_DUPLEX_STREAMED"])
def rr_fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Three equal sims behind round robin, plus a lone sim serving a model of its own."""
    sims = [
        SimSpec("sim-a", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-b", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-c", MODEL, ["--ttft-ms", "5", "--tpot-ms", "5"]),
        SimSpec("sim-solo", "solo-model"),
    ]
    with local_fleet(sims, policy="round_robin", body_mode=request.param,
                     picker_settings=FAST_HEALTH) as fleet:
        yield fleet


def metric_values(fleet: Fleet, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from the picker's /metrics, keyed by their sorted labels."""
    return metrics_at(fleet.admin_url, name)


def metrics_at(admin_url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """`metric_values` of a picker not started as a Fleet (inside the LiteLLM proxy)."""
    text = loopback().get(f"{admin_url}/metrics", timeout=5.0).text
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total_in_flight(fleet: Fleet) -> float:
    return sum(metric_values(fleet, "llm_picker_worker_in_flight").values())


def in_flight_mid_stream(fleet: Fleet, messages: list[dict[str, str]], max_tokens: int,
                         finish: bool = True) -> float:
    """The picker's in-flight count while a streamed chat completion through Envoy is under
    way (read after its first chunk); the stream is then read to its end, or abandoned
    (`finish=False`: the client goes away mid-stream)."""

    async def run() -> float:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10.0) as client:
            body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens,
                    "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.aiter_lines()
                await anext(lines)
                if finish:
                    await asyncio.sleep(0.1)
                seen = await asyncio.to_thread(total_in_flight, fleet)
                if finish:
                    async for _ in lines:
                        pass
                return seen

    return asyncio.run(run())
