"""Anthropic's Messages API end to end: real Envoy, the picker and simulated engines serving it
as vLLM does. Requests sharing a system prompt share a prefix (the engine renders the system
prompt first), streamed events pass through, and the picker's own refusals on these paths are
in Anthropic's error shape."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, SIM_HEADER

FAST = ["--ttft-ms", "1", "--tpot-ms", "1"]


def _homes_by_system(fleet_url: str, stream: bool) -> dict[int, set[str]]:
    """Anthropic requests in four groups, each with its own long system prompt (as blocks,
    with a per-request billing block vLLM drops), to the engine each landed on."""
    homes: dict[int, set[str]] = defaultdict(set)
    for i in range(16):
        group = i % 4
        system = f"group {group} " + " ".join(f"g{group}w{j}" for j in range(300))
        body = {"model": "claude-sim", "max_tokens": 3, "stream": stream,
                "system": [{"type": "text", "text": f"x-anthropic-billing-header: cch={i};"},
                           {"type": "text", "text": system}],
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": f"question {i}"}]}]}
        with loopback().stream("POST", f"{fleet_url}/v1/messages", json=body, timeout=10) as reply:
            text = reply.read().decode()
            assert reply.status_code == 200, text
            homes[group].add(reply.headers[SIM_HEADER])
        if stream:
            events = [line.split(": ", 1)[1] for line in text.splitlines()
                      if line.startswith("event: ")]
            assert events[0] == "message_start" and events[-1] == "message_stop", events
            assert events.count("content_block_delta") == 3
        else:
            assert json.loads(text)["type"] == "message"
    return homes


@pytest.mark.parametrize("mode", ["BUFFERED", "FULL_DUPLEX_STREAMED", "authz"])
def test_anthropic_messages_with_a_shared_system_prompt_land_on_one_engine(mode: str) -> None:
    sims = [SimSpec(f"e{i}", "claude-sim", FAST) for i in range(3)]
    settings = {**FAST_HEALTH, "prefix": {"enabled": True, "block_size": 64}}
    with local_fleet(sims, policy="prefix_cache", authz=mode == "authz",
                     body_mode="BUFFERED" if mode == "authz" else mode,
                     picker_settings=settings) as fleet:
        for stream in (False, True):
            homes = _homes_by_system(fleet.envoy_url, stream)
            assert all(len(engines) == 1 for engines in homes.values()), homes
        count = loopback().post(f"{fleet.envoy_url}/v1/messages/count_tokens", timeout=10, json={
            "model": "claude-sim", "messages": [{"role": "user", "content": "two words"}]})
        assert count.status_code == 200 and count.json() == {"input_tokens": 3}
        # The picker's own refusals on this path are in Anthropic's error shape.
        missing = loopback().post(f"{fleet.envoy_url}/v1/messages", timeout=10, json={
            "model": "nobody-serves-this", "max_tokens": 1, "messages": []})
        bad = loopback().post(f"{fleet.envoy_url}/v1/messages", timeout=10,
                              content=b"{not json", headers={"content-type": "application/json"})
    assert missing.status_code == 404
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "not_found_error"
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
