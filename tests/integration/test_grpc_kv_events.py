"""KV events of gRPC workers through real Envoy: `llm-picker sim --grpc --kv-events` streams its
cache's events on SubscribeKvEvents, the picker's index takes them, and prefix routing sends a
prompt back to the engine that holds it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.stack import Fleet, local_fleet
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.integration.conftest import FAST_HEALTH, MODEL
from tests.integration.test_grpc_route import GATEWAY, grpc_sim, post
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama", "llama-3.1")


def stored(fleet: Fleet) -> dict[str, float]:
    """llm_picker_kv_events_total{event="stored"} by worker, from the picker's metrics."""
    text = httpx.get(f"{fleet.admin_url}/metrics", timeout=5).text
    return {sample.labels["worker"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "llm_picker_kv_events"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["event"] == "stored"}


def cached(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    details = answer.json()["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens", 0))


def test_the_next_request_with_a_prefix_goes_to_the_engine_holding_it(
        tokenizer_dir: Path) -> None:
    """Two idle engines: without the index, prefix_cache breaks the tie at random, so six
    repeats of a prompt land on the engine that cached it only by its events."""
    sims = [grpc_sim(f"g{i}", tokenizer_dir, "--kv-events", "--block-tokens", "4")
            for i in range(2)]
    for sim in sims:
        sim.worker = {**sim.worker, "kv_events": {}}
    settings = {"prefix": {"enabled": True, "index": "kv_events", "kv_events": {
        "pending_secs": 0}, "tokenizer": {"kind": "hf", "path": str(tokenizer_dir)}}}
    with local_fleet(sims, policy="prefix_cache", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH,
                                      **settings}) as fleet:
        body = {"model": MODEL, "max_tokens": 1, "messages": [
            {"role": "user", "content": "tell me about the history of " * 12}]}
        assert cached(post(fleet, "/v1/chat/completions", body)) == 0
        wait_until(lambda: sum(stored(fleet).values()) > 0, what="the first BlockStored")
        [holder] = stored(fleet)  # one engine computed the prompt and said so
        for _ in range(6):
            assert cached(post(fleet, "/v1/chat/completions", body)) > 0
        assert list(stored(fleet)) == [holder]  # the repeats stored nothing new elsewhere
