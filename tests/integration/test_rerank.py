"""Rerank and score end to end: real Envoy, the picker and simulated engines serving them at
every path vLLM does; requests go to engines of the model, those sharing a query to one."""

from __future__ import annotations

from collections import defaultdict

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, SIM_HEADER

FAST = ["--ttft-ms", "1", "--tpot-ms", "1"]


def test_rerank_and_score_reach_an_engine_of_the_model_with_affinity_on_the_query() -> None:
    sims = [SimSpec(f"r{i}", "rerank-sim", FAST) for i in range(3)]
    sims.append(SimSpec("chat", "chat-sim", FAST))
    settings = {**FAST_HEALTH, "prefix": {"enabled": True, "block_size": 16}}
    with local_fleet(sims, policy="prefix_cache", picker_settings=settings) as fleet:
        homes: dict[int, set[str]] = defaultdict(set)
        for i, path in enumerate(["/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score"]
                                 * 4):
            query = f"query {i % 2} " + " ".join(f"q{i % 2}w{j}" for j in range(60))
            body = ({"model": "rerank-sim", "query": query, "documents": ["a b", f"doc {i}"]}
                    if "rerank" in path else
                    {"model": "rerank-sim", "text_1": query, "text_2": ["a b", f"doc {i}"]})
            response = loopback().post(f"{fleet.envoy_url}{path}", json=body, timeout=10)
            assert response.status_code == 200, (path, response.text)
            assert len(response.json()["results" if "rerank" in path else "data"]) == 2
            homes[i % 2].add(response.headers[SIM_HEADER])
        chat_stats = loopback().get(f"{fleet.sim_url('chat')}/sim/stats").json()
    assert all(len(engines) == 1 for engines in homes.values()), homes
    assert chat_stats["requests_total"] == 0
