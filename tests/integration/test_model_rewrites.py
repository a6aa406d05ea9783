"""Model rewrites end to end: real Envoy, the picker and simulated engines, which refuse a
model they do not serve, so every answer shows the engine got the target model in the body."""

from __future__ import annotations

from collections import Counter

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, SIM_HEADER

FAST = ["--ttft-ms", "1", "--tpot-ms", "1"]

@pytest.mark.parametrize("body_mode", ["BUFFERED", "FULL_DUPLEX_STREAMED"])
def test_a_rewritten_request_reaches_an_engine_serving_the_target(body_mode: str) -> None:
    """`food` is served by nobody: each 200 is an engine that got its own model in the body
    (the sims answer any other model 404), and both targets get some of 40 requests (50/50:
    all on one side happens once in 5e11)."""
    sims = [SimSpec("v1", "food-v1", FAST), SimSpec("v2", "food-v2", FAST)]
    rule = {"name": "food-ab", "matches": [{"model": {"value": "food"}}],
            "targets": [{"model_rewrite": "food-v1"}, {"model_rewrite": "food-v2"}]}
    settings = {**FAST_HEALTH, "model_rewrites": {"rules": [rule]}}
    with local_fleet(sims, body_mode=body_mode, picker_settings=settings) as fleet:
        served: Counter[str] = Counter()
        for i in range(40):
            body = {"model": "food", "max_tokens": 2, "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"dish {i}"}]}
            response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=body,
                                       timeout=10)
            assert response.status_code == 200, response.text
            served[response.headers[SIM_HEADER]] += 1
        metrics = loopback().get(f"{fleet.admin_url}/metrics").text
    assert served["v1"] > 0 and served["v2"] > 0, served
    for worker, target in (("v1", "food-v1"), ("v2", "food-v2")):
        line = (f'llm_picker_model_rewrite_decisions_total{{model="food",rule="food-ab",'
                f'target="{target}"}} {float(served[worker])}')
        assert line in metrics, metrics
