"""Two and three `llm-picker serve` replicas behind one real Envoy (its ext_proc cluster lists
them all and round-robins the streams), on the approximate prefix index: sharing picks, every
request of a shared prefix lands on one engine whichever replica decided it; without sharing,
the replicas split prefixes over engines. A replica killed costs neither routing nor the
survivors' agreement."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.loopback import loopback
from picker_bench.stack import (
    Process,
    SimSpec,
    free_port,
    render_envoy_config,
    replica_configs,
    start_envoy,
    start_picker,
    start_sims,
)
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER, wait_until

GROUPS = 6


def system(group: int) -> str:
    return f"system prompt {group}: " + " ".join(f"rule{group}-{j}" for j in range(300))


def chat(group: int, question: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1, "messages": [
        {"role": "system", "content": system(group)}, {"role": "user", "content": question}]}


class Stack:
    def __init__(self, envoy_url: str, envoy_admin: str, pickers: list[Process],
                 configs: list[dict[str, Any]]) -> None:
        self.envoy_url = envoy_url
        self.envoy_admin = envoy_admin
        self.pickers = pickers
        self.configs = configs

    def engines_per_group(self, groups: range, turns: int) -> dict[int, set[str]]:
        """Send `turns` requests per group, one after the other (Envoy's round robin gives
        consecutive ones to different replicas); the engines that served each group."""
        served: dict[int, set[str]] = {}
        with httpx.Client(base_url=self.envoy_url, timeout=10) as client:
            for group in groups:
                for turn in range(turns):
                    response = client.post("/v1/chat/completions",
                                           json=chat(group, f"question {turn}"))
                    assert response.status_code == 200, response.text
                    served.setdefault(group, set()).add(response.headers[SIM_HEADER])
        return served

    def healthy_replicas(self) -> int:
        text = loopback().get(f"{self.envoy_admin}/clusters", timeout=5).text
        return sum(1 for line in text.splitlines()
                   if line.startswith("llm_picker::") and "::health_flags::healthy" in line)

    def metric(self, replica: int, name: str, **labels: str) -> float:
        """Sum of a replica's samples of `name` having `labels`."""
        port = self.configs[replica]["admin"]["port"]
        text = loopback().get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())


@contextlib.contextmanager
def replicas_behind_envoy(count: int, share: bool, engines: int = 3,
                          engine_args: Sequence[str] = ("--ttft-ms", "1", "--tpot-ms", "1"),
                          settings: Mapping[str, Any] | None = None) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-replicas-"))
    started: list[Process] = []
    try:
        sims = [SimSpec(f"e{i}", MODEL, list(engine_args)) for i in range(engines)]
        started += start_sims(sims, workdir)
        workers = [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": [MODEL]}
                   for s in sims]
        configs = replica_configs({**FAST_HEALTH, "policy": "prefix_cache",
                                   "prefix": {"enabled": True}, "workers": workers,
                                   **(settings or {})}, count, share)
        pickers: list[Process] = []
        for i, config in enumerate(configs):  # each stopped below even if a later one fails
            pickers.append(start_picker(config, workdir, name=f"picker-{i}"))
            started.append(pickers[-1])
        ports = [config["extproc"]["port"] for config in configs]
        listen, admin = free_port(), free_port()
        started.append(start_envoy(render_envoy_config(
            listen_port=listen, admin_port=admin, picker_port=ports[0],
            replica_ports=ports[1:]), workdir))
        stack = Stack(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", pickers,
                      configs)
        wait_until(lambda: stack.healthy_replicas() == count, 10, "Envoy to check replicas")
        if share:
            wait_until(lambda: all(stack.metric(i, "llm_picker_replica_peers_connected")
                                   == count - 1 for i in range(count)), 10, "replicas linked")
        yield stack
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("count", [2, 3])
def test_replicas_sharing_picks_keep_each_prefix_on_one_engine(count: int) -> None:
    with replicas_behind_envoy(count, share=True) as stack:
        served = stack.engines_per_group(range(GROUPS), turns=2 * count)
        assert all(len(engines) == 1 for engines in served.values()), served
        # Every replica decided some of them, and learned the others' picks.
        for replica in range(count):
            assert stack.metric(replica, "llm_picker_decisions_total") >= GROUPS
            assert stack.metric(replica, "llm_picker_replica_picks_received_total") >= GROUPS
        assert sum(stack.metric(r, "llm_picker_replica_picks_dropped_total")
                   for r in range(count)) == 0


def test_replicas_without_sharing_split_prefixes() -> None:
    """The baseline: each replica learns from its own picks only. Least load breaks ties at
    random, so a replica that never saw a prefix sends it to any engine: with 6 prefixes over
    3 replicas, the chance that none is split is (1/3)^12."""
    with replicas_behind_envoy(3, share=False) as stack:
        served = stack.engines_per_group(range(GROUPS), turns=6)
        assert sum(1 for engines in served.values() if len(engines) > 1) >= 1, served


def test_a_replica_killed_costs_neither_routing_nor_agreement() -> None:
    with replicas_behind_envoy(3, share=True) as stack:
        before = stack.engines_per_group(range(GROUPS), turns=3)
        stack.pickers[2].kill()
        wait_until(lambda: stack.healthy_replicas() == 2, 10, "Envoy to drop the replica")
        wait_until(lambda: all(stack.metric(i, "llm_picker_replica_peers_connected") == 1
                               for i in range(2)), 10, "survivors to see the peer gone")
        # Old prefixes stay where they were, new ones are agreed on by the two survivors.
        after = stack.engines_per_group(range(2 * GROUPS), turns=4)
        assert all(after[g] == before[g] for g in range(GROUPS)), (before, after)
        assert all(len(engines) == 1 for engines in after.values()), after
        # The survivors kept publishing to the dead peer's address: those picks were dropped.
        assert sum(stack.metric(i, "llm_picker_replica_picks_dropped_total",
                                reason="peer_down") for i in range(2)) > 0


def test_a_replica_waits_behind_the_prefill_a_peer_sent() -> None:
    """Issue 35.3: replica A sends a long prompt to a slow-prefilling engine; replica B, which
    routed nothing there and holds no lease on it, counts the prompt ahead on that engine at
    once (its picks carry the uncached tokens), as A does."""
    with replicas_behind_envoy(2, share=True, engines=1,
                               engine_args=("--prefill-tokens-per-sec", "400", "--ttft-ms", "5",
                                            "--tpot-ms", "5"),
                               settings={"load": {"interval_secs": 0.1}}) as stack:
        with httpx.Client(base_url=stack.envoy_url, timeout=30) as client:
            for group in range(4):  # both replicas scrape the engine's prefill counters
                assert client.post("/v1/chat/completions",
                                   json=chat(100 + group, "q")).status_code == 200
        wait_until(lambda: all(stack.metric(r, "llm_picker_worker_prefill_tokens_per_second")
                               > 0 for r in range(2)), what="both replicas know the rate")

        def in_flight(replica: int) -> float:
            return stack.metric(replica, "llm_picker_worker_in_flight")

        def ahead(replica: int) -> int:
            port = stack.configs[replica]["admin"]["port"]
            view = loopback().get(f"http://127.0.0.1:{port}/workers/e0", timeout=5).json()
            return int(view["state"]["prefill_ahead"])

        async def run() -> tuple[int, int]:
            long_prompt = {"model": MODEL, "max_tokens": 1, "messages": [
                {"role": "user", "content": " ".join(f"doc-{j}" for j in range(3000))}]}
            async with httpx.AsyncClient(base_url=stack.envoy_url, timeout=60) as client:
                sent = asyncio.create_task(client.post("/v1/chat/completions",
                                                       json=long_prompt))
                await asyncio.to_thread(wait_until, lambda: sum(
                    in_flight(r) for r in range(2)) == 1, what="the prompt routed")
                deciding = 0 if in_flight(0) == 1 else 1
                seen = await asyncio.to_thread(lambda: (ahead(deciding), ahead(1 - deciding)))
                assert (await sent).status_code == 200
            return seen

        mine, peers = asyncio.run(run())
        assert mine > 1000 and peers == pytest.approx(mine, rel=0.2), (mine, peers)
