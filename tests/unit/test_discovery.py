"""Discovery against real HTTP servers: OpenAI /v1/models, SGLang info, DP ranks, retries."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from picker.fleet.served_models import (
    DiscoverySettings,
    WorkerUnreachable,
    discover,
    expand_dp_ranks,
)
from picker.fleet.worker_spec import WorkerSpec
from tests.http_stub import StubServer
from tests.sim_thread import running_sim

FAST = DiscoverySettings(attempt_timeout_secs=0.5, backoff_initial_secs=0.01,
                         backoff_max_secs=0.02)


@pytest.fixture
def sglang() -> Iterator[StubServer]:
    """Answers the SGLang endpoints discovery reads (the simulator speaks vLLM's dialect)."""
    stub = StubServer({
        "/v1/models": {"object": "list", "data": [{"id": "qwen"}]},
        "/get_model_info": {"model_path": "Qwen/Qwen3", "tokenizer_path": "/models/qwen"},
        "/get_server_info": {"dp_size": 4},
    }, status=404)
    yield stub
    stub.close()


async def test_models_discovered_from_v1_models() -> None:
    with running_sim(model="llama") as url:
        async with httpx.AsyncClient() as client:
            spec = await discover(WorkerSpec(url=url), client, FAST)
    assert spec.models == ["llama"] and spec.model_id == "llama"


async def test_lora_adapters_discovered_from_parent() -> None:
    """vLLM lists adapters with `parent` = the base model; the base has none."""
    with running_sim(model="llama", max_loras=2, lora_modules=("sql", "chat")) as url:
        async with httpx.AsyncClient() as client:
            spec = await discover(WorkerSpec(url=url), client, FAST)
            declared = await discover(WorkerSpec(url=url, adapters={"sql": "llama"}),
                                      client, FAST)
    assert spec.models == ["llama", "sql", "chat"]
    assert spec.adapters == {"sql": "llama", "chat": "llama"}
    assert spec.model_id == "llama"
    assert declared.adapters == {"sql": "llama"}  # the operator's word is kept


def test_declared_adapters_are_served_models_of_a_served_base() -> None:
    spec = WorkerSpec(url="h:1", models=["llama"], adapters={"sql": "llama"})
    assert spec.models == ["llama", "sql"] and spec.updated().models == ["llama", "sql"]
    with pytest.raises(ValueError, match="base model other is not in models"):
        WorkerSpec(url="h:1", models=["llama"], adapters={"sql": "other"})


async def test_operator_values_are_kept() -> None:
    with running_sim(model="llama") as url:
        async with httpx.AsyncClient() as client:
            spec = await discover(WorkerSpec(url=url, model_id="mine"), client, FAST)
    assert spec.model_id == "mine"


async def test_sglang_info_and_dp_ranks(sglang: StubServer) -> None:
    async with httpx.AsyncClient() as client:
        spec = await discover(WorkerSpec(url=sglang.url, runtime_type="sglang", id="e",
                                         api_key="sk-1"), client, FAST)
    assert spec.tokenizer_path == "/models/qwen" and spec.dp_size == 4
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-1"
    assert set(sglang.auth) == {"Bearer sk-1"}
    ranks = expand_dp_ranks(spec)
    assert [r.url for r in ranks] == [f"{sglang.url}@{i}" for i in range(4)]
    assert [r.id for r in ranks] == [f"e@{i}" for i in range(4)]
    assert {r.host_port for r in ranks} == {sglang.url.removeprefix("http://")}
    assert all(r.dp_base_url == sglang.url and r.api_key for r in ranks)


async def test_unreachable_after_attempts() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(WorkerUnreachable, match="3 attempts"):
            await discover(WorkerSpec(url="127.0.0.1:1", max_connection_attempts=3), client,
                           FAST)


def test_rank_url_round_trips_through_validation() -> None:
    spec = WorkerSpec(url="http://h:1@2", dp_size=4)
    assert (spec.dp_rank, spec.dp_base_url, spec.host_port) == (2, "http://h:1", "h:1")
    with pytest.raises(ValueError, match="rank 2"):
        WorkerSpec(url="http://h:1@2", dp_rank=1)


async def test_a_model_name_no_request_could_carry_is_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    long_path = "/models/" + "x" * 300
    stub = StubServer({"/v1/models": {"object": "list", "data": [{"id": long_path},
                                                                 {"id": "short"}]}}, status=404)
    try:
        async with httpx.AsyncClient() as client:
            spec = await discover(WorkerSpec(url=stub.url), client, FAST)
    finally:
        stub.close()
    assert spec.models == ["short"]
    assert "1 model(s) over 256 characters" in caplog.text
