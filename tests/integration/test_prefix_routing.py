"""Prefix-cache routing end to end: real Envoy, the picker, simulated engines with caches."""

from __future__ import annotations

from collections import defaultdict

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, free_port, local_fleet
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER


@pytest.mark.parametrize("tokenizer", ["character", "remote"])
def test_shared_prefix_groups_stay_on_one_engine_and_hit_its_cache(tokenizer: str) -> None:
    sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"], port=free_port())
            for i in range(3)]
    prefix: dict[str, object] = {"enabled": True, "block_size": 64}
    if tokenizer == "remote":  # the engines' own /tokenize; blocks of 16 tokens
        prefix.update(block_size=16, tokenizer={
            "kind": "remote", "endpoint": f"http://127.0.0.1:{sims[0].port}"})
    settings = {**FAST_HEALTH, "prefix": prefix}
    with local_fleet(sims, policy="prefix_cache", picker_settings=settings) as fleet:
        homes: dict[int, set[str]] = defaultdict(set)
        for i in range(24):
            group = i % 4
            system = f"group {group} " + " ".join(f"g{group}w{j}" for j in range(300))
            body = {"model": MODEL, "max_tokens": 1, "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {i}"}]}
            response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=body,
                                       timeout=10)
            assert response.status_code == 200
            homes[group].add(response.headers[SIM_HEADER])
        assert all(len(engines) == 1 for engines in homes.values()), homes
        stats = [loopback().get(f"{fleet.sim_url(s.worker_id)}/sim/stats").json() for s in sims]
        hit_rate = sum(s["cached_tokens"] for s in stats) / sum(s["prompt_tokens"] for s in stats)
        assert hit_rate > 0.7, hit_rate  # 20 of 24 requests reuse their group's prompt
        metrics = loopback().get(f"{fleet.admin_url}/metrics").text
        assert "llm_picker_tokenizer_fallbacks_total 0.0" in metrics
