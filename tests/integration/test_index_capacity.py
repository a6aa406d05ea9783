"""The approximate index forgets no later than the engine does (issue 19): real Envoy, picker,
simulated engines whose prompts have ~6 characters per token, not the 4 once assumed.

Each session's second turn follows ~550 tokens of other traffic on its engine: the engine
(960 tokens of cache) still holds the first turn; an index sized at 4 characters per token
(640 tokens' worth) has forgotten it and sends the turn wherever the trees say.
"""

from __future__ import annotations

import random
import time

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, free_port, local_fleet
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _words(rng: random.Random, count: int) -> str:
    return " ".join("".join(rng.choices(_LETTERS, k=5)) for _ in range(count))


def test_sessions_are_not_forgotten_before_the_engine_forgets_them() -> None:
    rng = random.Random(7)
    # 60 blocks of 16 tokens per engine
    sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1", "--cache-blocks", "60"],
                    port=free_port()) for i in range(2)]
    settings = {**FAST_HEALTH, "load": {"interval_secs": 0.05},
                "prefix": {"enabled": True, "block_size": 64}}
    with local_fleet(sims, policy="prefix_cache", picker_settings=settings) as fleet:
        def send(messages: list[dict[str, str]]) -> str:
            response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10, json={
                "model": MODEL, "max_tokens": 1, "messages": messages})
            assert response.status_code == 200
            time.sleep(0.06)  # a scrape between requests, as under steady traffic
            return response.headers[SIM_HEADER]

        for _ in range(40):  # enough traffic for the picker to measure characters per token
            send([{"role": "user", "content": _words(rng, 100)}])
        sticky = 0
        for session in range(6):
            history = [{"role": "system", "content": f"session {session} " + _words(rng, 250)}]
            first = send(history)
            for _ in range(11):  # ~1100 tokens of one-off prompts over both engines
                send([{"role": "user", "content": _words(rng, 100)}])
            history += [{"role": "assistant", "content": "ok"},
                        {"role": "user", "content": _words(rng, 10)}]
            sticky += send(history) == first
        assert sticky == 6
        metrics = loopback().get(f"{fleet.admin_url}/metrics").text
        assert "llm_picker_prefix_units_per_token" in metrics
