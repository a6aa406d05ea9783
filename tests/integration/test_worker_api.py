"""The worker API on a live picker behind the real Envoy: add, drain, change at runtime."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet, start_sim
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER, total_in_flight, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(fleet_url: str) -> str:
    response = loopback().post(f"{fleet_url}/v1/chat/completions", timeout=10,
                               json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200, response.text
    return response.headers[SIM_HEADER]


def test_added_worker_is_discovered_then_routed_to() -> None:
    with local_fleet([SimSpec("a", MODEL)], policy="round_robin",
                     picker_settings=FAST_HEALTH) as fleet:
        extra = SimSpec("b", MODEL)
        proc = start_sim(extra, fleet.workdir)
        try:
            added = loopback().post(f"{fleet.admin_url}/workers", timeout=30,
                                    json={"url": f"http://127.0.0.1:{extra.port}", "id": "b"})
            assert added.status_code == 201, added.text
            assert added.json()["models"] == [MODEL]  # discovered from /v1/models
            assert Counter(chat(fleet.envoy_url) for _ in range(10)) == {"a": 5, "b": 5}
        finally:
            proc.stop()


def test_delete_while_streams_are_in_flight_loses_none() -> None:
    sim_args = ["--ttft-ms", "5", "--tpot-ms", "20"]
    # Health checks that a busy machine's one slow probe does not fail: the split below
    # needs both engines routable throughout (FAST_HEALTH ejects on one 0.5 s timeout).
    tolerant = {"health": {**FAST_HEALTH["health"], "timeout_secs": 2.0, "failure_threshold": 3}}
    with local_fleet([SimSpec("b", MODEL, sim_args)], policy="round_robin",
                     picker_settings=tolerant) as fleet:
        extra = SimSpec("a", MODEL, sim_args)
        proc = start_sim(extra, fleet.workdir)
        try:
            added = loopback().post(f"{fleet.admin_url}/workers", timeout=30,
                                    json={"url": f"http://127.0.0.1:{extra.port}", "id": "a"})
            assert added.status_code == 201, added.text

            async def scenario() -> tuple[list[tuple[int, str, int]], dict[str, object]]:
                async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=20) as client:
                    async def stream() -> tuple[int, str, int]:
                        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 30,
                                "stream": True}
                        async with client.stream("POST", "/v1/chat/completions",
                                                 json=body) as r:
                            lines = [line async for line in r.aiter_lines() if line]
                            return r.status_code, r.headers[SIM_HEADER], len(lines)

                    streams = [asyncio.create_task(stream()) for _ in range(8)]
                    await asyncio.sleep(0.2)
                    async with httpx.AsyncClient(base_url=fleet.admin_url, timeout=30) as admin:
                        deleted = (await admin.delete("/workers/a")).json()
                    return list(await asyncio.gather(*streams)), deleted

            results, deleted = asyncio.run(scenario())
            assert deleted["drained"] is True
            assert {status for status, _, _ in results} == {200}
            # 30 tokens + final chunk + usage + [DONE]: every stream arrived whole.
            assert {lines for _, _, lines in results} == {33}
            assert Counter(worker for _, worker, _ in results) == {"a": 4, "b": 4}
            assert {chat(fleet.envoy_url) for _ in range(6)} == {"b"}
            wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")
        finally:
            proc.stop()


def test_patch_priority_steers_least_load_and_file_workers_are_the_files() -> None:
    with local_fleet([SimSpec("a", MODEL)], policy="least_load",
                     picker_settings=FAST_HEALTH) as fleet:
        extra = SimSpec("b", MODEL)
        proc = start_sim(extra, fleet.workdir)
        try:
            url = f"http://127.0.0.1:{extra.port}"
            assert loopback().post(f"{fleet.admin_url}/workers", json={"url": url, "id": "b"},
                                   timeout=30).status_code == 201
            patched = loopback().patch(f"{fleet.admin_url}/workers/b", json={"priority": 90},
                                       timeout=5)
            assert patched.status_code == 200 and patched.json()["priority"] == 90
            assert {chat(fleet.envoy_url) for _ in range(6)} == {"b"}
            # "a" is declared in the picker's configuration file: the API says to edit it.
            refused = loopback().patch(f"{fleet.admin_url}/workers/a", json={"priority": 99},
                                       timeout=5)
            assert refused.status_code == 409
            assert str(fleet.workdir / "picker.yaml") in refused.json()["error"]["message"]
            assert loopback().delete(f"{fleet.admin_url}/workers/a", timeout=5).status_code == 409
            assert {chat(fleet.envoy_url) for _ in range(6)} == {"b"}
        finally:
            proc.stop()


def test_least_queue_follows_engine_metrics_and_state_is_visible() -> None:
    settings = {**FAST_HEALTH, "load": {"interval_secs": 0.1}}
    with local_fleet([SimSpec("a", MODEL), SimSpec("b", MODEL)], policy="least_queue",
                     picker_settings=settings) as fleet:
        loopback().post(f"{fleet.sim_url('a')}/sim/control", json={"extra_waiting": 12}, timeout=5)
        wait_until(lambda: (loopback().get(f"{fleet.admin_url}/workers/a").json()["state"]
                            .get("engine") or {}).get("waiting") == 12,
                   what="a's queue scraped")
        assert {chat(fleet.envoy_url) for _ in range(6)} == {"b"}
        engine = loopback().get(f"{fleet.admin_url}/workers/a").json()["state"]["engine"]
        assert 0 <= engine["age_secs"] < 5
