"""`llm-picker serve --workers 2` behind a real Envoy listing both processes (issue 17, item 3):
the two processes act as one picker. In-flight counts are shared (a least_load pick in one
process sees the other's streams; per_worker_max holds across both), and so are prefill
backlogs; a worker added through the one admin API is routed to by both, and /metrics counts
both processes' requests. In `--mode authz` each request's access-log entry reaches the
process that admitted it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from picker_bench.loopback import loopback
from picker_bench.stack import (
    ENVOY_GATEWAY,
    Fleet,
    SimSpec,
    free_port,
    free_port_run,
    local_fleet,
    start_sim,
    wait_listening,
)
from tests.integration.conftest import (
    FAST_HEALTH,
    MODEL,
    SIM_HEADER,
    metric_values,
    total_in_flight,
    wait_until,
)
from tests.waiting import process_running

ENGINES = 4
SLOW = ["--ttft-ms", "5", "--tpot-ms", "40"]  # a 100-token stream lasts ~4 s


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    sims = [SimSpec(f"sim-{i}", MODEL, SLOW) for i in range(ENGINES)]
    with local_fleet(sims, policy="least_load", processes=2,
                     picker_settings=FAST_HEALTH) as running:
        yield running


def _chat(model: str = MODEL, max_tokens: int = 1, stream: bool = False) -> dict[str, object]:
    return {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]}


@contextlib.asynccontextmanager
async def _held_streams(fleet: Fleet, count: int) -> AsyncIterator[list[str]]:
    """Open `count` long streams one after the other (each after the previous one's first
    chunk, so every pick sees the streams before it); yields the engine serving each."""
    async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=20.0) as client, \
            contextlib.AsyncExitStack() as streams:
        engines, readers = [], []
        for _ in range(count):
            response = await streams.enter_async_context(client.stream(
                "POST", "/v1/chat/completions", json=_chat(max_tokens=100, stream=True)))
            assert response.status_code == 200
            # Kept: a line iterator collected mid-stream closes its connection (a cancel).
            readers.append(response.aiter_lines())
            await anext(readers[-1])
            engines.append(response.headers[SIM_HEADER])
        yield engines


def _served_by_process(fleet: Fleet, cluster: str = "llm_picker") -> list[int]:
    """ext_proc streams (or authz checks) Envoy sent to each picker process (its cluster's
    per-host rq_total)."""
    text = loopback().get(f"{fleet.envoy_admin_url}/clusters", timeout=5).text
    return [int(line.rsplit("::", 1)[1]) for line in sorted(text.splitlines())
            if line.startswith(f"{cluster}::") and "::rq_total::" in line]


def test_least_load_sees_both_processes_streams(fleet: Fleet) -> None:
    """4 streams held open, opened one by one and alternating between the processes: each goes
    to an idle engine only if every pick counts the other process's streams too (a process
    counting its own would send its second stream to an engine the other one filled, 2 times
    in 3 by least_load's random tie-break)."""

    async def run() -> tuple[list[str], float]:
        async with _held_streams(fleet, ENGINES) as engines:
            seen = await asyncio.to_thread(total_in_flight, fleet)
            return engines, seen

    for _ in range(2):
        before = _served_by_process(fleet)
        engines, in_flight = asyncio.run(run())
        assert sorted(engines) == [f"sim-{i}" for i in range(ENGINES)], engines
        assert in_flight == ENGINES  # the primary's /metrics counts the follower's streams
        after = _served_by_process(fleet)
        assert all(b - a >= 1 for a, b in zip(before, after, strict=True)), (before, after)
    wait_until(lambda: total_in_flight(fleet) == 0, what="every stream released")


def test_metrics_count_every_process(fleet: Fleet) -> None:
    def completed() -> float:
        return metric_values(fleet, "llm_picker_requests_total").get(
            (("outcome", "completed"),), 0.0)

    before, served_before = completed(), sum(_served_by_process(fleet))
    with httpx.Client(base_url=fleet.envoy_url, timeout=10) as client:
        for _ in range(20):
            assert client.post("/v1/chat/completions", json=_chat()).status_code == 200
    assert sum(_served_by_process(fleet)) - served_before == 20
    wait_until(lambda: completed() - before == 20, what="20 completed requests in /metrics")


def test_worker_added_through_the_admin_api_reaches_both(fleet: Fleet) -> None:
    solo = SimSpec("sim-solo", "solo-model")
    proc = start_sim(solo, fleet.workdir)
    try:
        with httpx.Client(base_url=fleet.envoy_url, timeout=10) as client:
            assert client.post("/v1/chat/completions",
                               json=_chat("solo-model")).status_code == 404
            url = f"http://127.0.0.1:{solo.port}"
            added = loopback().post(f"{fleet.admin_url}/workers",
                                    json={"url": url, "id": "sim-solo", "models": ["solo-model"]})
            assert added.status_code in (200, 201, 202), added.text
            wait_until(lambda: client.post("/v1/chat/completions", json=_chat("solo-model"))
                       .status_code == 200, what="the new worker routable")
            time.sleep(0.1)  # the follower's mirror lags the primary by ~10 ms
            for _ in range(6):  # Envoy alternates processes: both must know the worker
                response = client.post("/v1/chat/completions", json=_chat("solo-model"))
                assert response.status_code == 200, response.text
                assert response.headers[SIM_HEADER] == "sim-solo"
            deleted = loopback().delete(f"{fleet.admin_url}/workers/sim-solo")
            assert deleted.status_code in (200, 202)
            wait_until(lambda: all(client.post("/v1/chat/completions",
                                               json=_chat("solo-model")).status_code == 404
                                   for _ in range(4)), what="the worker gone in both")
    finally:
        proc.stop()


def test_per_worker_max_holds_across_processes() -> None:
    sims = [SimSpec(f"sim-{i}", MODEL, SLOW) for i in range(2)]
    with local_fleet(sims, policy="least_load", processes=2,
                     picker_settings={**FAST_HEALTH, "limits": {"per_worker_max": 1}}) as fleet:

        async def run() -> int:
            async with _held_streams(fleet, 2), httpx.AsyncClient(timeout=10) as client:
                statuses = [(await client.post(f"{fleet.envoy_url}/v1/chat/completions",
                                               json=_chat())).status_code for _ in range(2)]
                # Both processes got one of the two extra requests: both refused them.
                assert len(set(statuses)) == 1, statuses
                return statuses[0]

        assert asyncio.run(run()) in (429, 503)


def test_gateway_configuration_with_two_processes() -> None:
    """What an InferencePool gateway generates (self-signed TLS to the picker, both bodies
    FULL_DUPLEX_STREAMED, every response chunk echoed by the picker) in front of two
    processes: streams complete through both, and every slot is released at its end."""
    sims = [SimSpec(f"sim-{i}", MODEL, ["--ttft-ms", "5", "--tpot-ms", "2"]) for i in range(2)]
    with local_fleet(sims, policy="least_load", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY, processes=2,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH}) as fleet:
        # Both processes serve; the gateway's cluster is LEAST_REQUEST, not round robin, so
        # short streams need not alternate (3/5, 1/7 and 0/8 were seen): 8 streams, then more
        # until both have served, at most 40 (all on one process: 1 in 2^39).
        with httpx.Client(base_url=fleet.envoy_url, timeout=10) as client:
            for sent in range(1, 41):
                response = client.post("/v1/chat/completions",
                                       json=_chat(max_tokens=5, stream=True))
                assert response.status_code == 200, response.text
                assert response.text.rstrip().endswith("data: [DONE]")
                served = _served_by_process(fleet)
                if sent >= 8 and len(served) == 2 and min(served) >= 1:
                    break
        assert len(served) == 2 and min(served) >= 1, served
        wait_until(lambda: total_in_flight(fleet) == 0, what="every slot released")


def test_authz_processes_release_their_own_leases() -> None:
    sims = [SimSpec(f"sim-{i}", MODEL, SLOW) for i in range(ENGINES)]
    with local_fleet(sims, policy="least_load", processes=2, authz=True,
                     picker_settings=FAST_HEALTH) as fleet:

        async def run() -> tuple[list[str], float]:
            async with _held_streams(fleet, ENGINES) as engines:
                return engines, await asyncio.to_thread(total_in_flight, fleet)

        engines, in_flight = asyncio.run(run())
        assert sorted(engines) == [f"sim-{i}" for i in range(ENGINES)], engines
        assert in_flight == ENGINES
        with httpx.Client(base_url=fleet.envoy_url, timeout=10) as client:
            for _ in range(20):
                assert client.post("/v1/chat/completions", json=_chat()).status_code == 200
        checks = _served_by_process(fleet, "llm_picker_authz")
        assert len(checks) == 2 and min(checks) >= 10, checks
        # Every lease, whichever process admitted it, is released by its own access log.
        wait_until(lambda: total_in_flight(fleet) == 0, what="every lease released")
        outcomes = metric_values(fleet, "llm_picker_requests_total")
        assert outcomes == {(("outcome", "completed"),): 20,  # the held streams were abandoned
                            (("outcome", "cancelled"),): ENGINES}, outcomes


def _picker_argv(tmp_path: Path, *extra: str, **config: object) -> list[str]:
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump({"admin": {"port": free_port()}} | config))
    return [sys.executable, "-m", "llm_picker", "serve", "--config", str(path), *extra]


def test_stop_and_crash_take_the_whole_group_down(tmp_path: Path) -> None:
    """SIGTERM stops the group (exit 0), a dead child stops it (exit 1), and a supervisor
    killed outright takes its children with it; the directory it could not remove is removed
    by the next group started."""
    port = free_port_run(2)
    argv = _picker_argv(tmp_path, "--workers", "2", extproc={"port": port})
    temp = Path(tempfile.mkdtemp(prefix="group-test-", dir="/tmp"))
    # Too long for the registry feed's Unix socket (107 bytes): the group goes to /tmp.
    long_temp = tmp_path / ("d" * 100)
    long_temp.mkdir()
    try:
        for how, temp_dir in (("sigkill", temp), ("sigterm", temp), ("crash", long_temp)):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True,
                                    env={**os.environ, "TMPDIR": str(temp_dir)})
            try:
                children: list[int] = []
                deadline = time.monotonic() + 20
                while len(children) < 2 and time.monotonic() < deadline:
                    found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                           text=True).stdout.split()
                    children = [int(pid) for pid in found]
                    time.sleep(0.1)
                assert len(children) == 2
                # Both serving (a wait, not a sleep: a child still starting dies of SIGTERM).
                wait_listening([port, port + 1])
                proc.send_signal(signal.SIGHUP)  # a config reload: goes to process 0, stops nobody
                time.sleep(0.5)
                assert proc.poll() is None and all(process_running(pid) for pid in children)
                if how == "sigkill":
                    proc.kill()
                    proc.wait(5)
                    deadline = time.monotonic() + 10
                    while (any(process_running(pid) for pid in children)
                           and time.monotonic() < deadline):
                        time.sleep(0.1)
                    assert not any(process_running(pid) for pid in children)
                    assert len(list(temp.glob("llm-picker-group-*"))) == 1  # orphaned
                    continue
                if how == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(20) == 0, proc.stdout.read() if proc.stdout else ""
                    assert not list(temp.glob("llm-picker-group-*"))  # its own and the orphan
                else:
                    os.kill(children[1], signal.SIGKILL)
                    assert proc.wait(20) == 1
                    assert "process 1 exited with code -9; stopping the others" in (
                        proc.stdout.read() if proc.stdout else "")
                assert not any(process_running(pid) for pid in children)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize(("extra", "config", "message"), [
    (["--mode", "authz", "--authz-port", "0"], {"extproc": {"port": 1}},
     "extproc.port: --workers gives process i"),
    ([], {"extproc": {"port": 0}}, "extproc.port: --workers gives process i"),
    # The defaults (9002, 9003) with --workers 2: process 1 would take the admin port.
    ([], {"extproc": {"port": 9002}, "admin": {"port": 9003}},
     "admin.port: 9003 is one of extproc.port's ports with --workers 2"),
    (["--mode", "authz", "--authz-port", "9003"], {"extproc": {"port": 9002}},
     "--authz-port: 9003-9004 overlaps extproc.port's ports"),
    (["--mode", "authz", "--authz-port", "9114"], {"extproc": {"port": 9002},
                                                  "admin": {"port": 9115}},
     "admin.port: 9115 is one of --authz-port's ports"),
    ([], {"extproc": {"port": 65535}}, "extproc.port: 65535-65536 with --workers 2 runs past"),
    ([], {"extproc": {"port": 9002}, "prefix": {"enabled": True},
          "replicas": {"listen": "127.0.0.1:9300", "peers": ["127.0.0.1:9300"]}},
     "replicas: with --workers the processes share picks"),
])
def test_what_workers_cannot_do_is_a_config_error(
        tmp_path: Path, extra: list[str], config: dict[str, object], message: str) -> None:
    done = subprocess.run(_picker_argv(tmp_path, "--workers", "2", *extra, **config),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


def test_quotas_are_one_budget_across_processes() -> None:
    """Issue 26, item 6: a flow has one budget whichever process serves it. Flow `rpm`'s
    requests alternate with another flow's, so Envoy's round robin over the two processes
    gives all of them to one process (a process holding half the budget admitted 3 of 6);
    flow `tpm`'s requests each ask 0.8 of its minute (two processes holding half each
    admitted one each: 1.6 of the budget)."""
    flow = {"enabled": True, "trust_client_headers": True,
            "quotas": {"rpm": {"requests_per_minute": 6},
                       "tpm": {"tokens_per_minute": 1000}}}
    sims = [SimSpec("sim-0", MODEL)]
    with local_fleet(sims, processes=2, picker_settings={**FAST_HEALTH, "flow": flow}) as fleet:

        def send(flow_id: str, prompt: str = "hello") -> httpx.Response:
            body = {**_chat(), "messages": [{"role": "user", "content": prompt}]}
            with httpx.Client(base_url=fleet.envoy_url, timeout=10) as client:  # a connection
                return client.post("/v1/chat/completions", json=body,
                                   headers={"x-gateway-inference-fairness-id": flow_id})

        before = _served_by_process(fleet)
        rpm = []
        for _ in range(18):  # 3x the budget, well inside one minute
            assert send("other").status_code == 200
            rpm.append(send("rpm"))
        tpm = [send("tpm", "word " * 640) for _ in range(4)]  # 3200 characters: 800 tokens
        after = _served_by_process(fleet)
    assert all(b - a >= 10 for a, b in zip(before, after, strict=True)), (before, after)
    for responses, admitted in ((rpm, 6), (tpm, 1)):
        assert [r.status_code for r in responses].count(200) == admitted
        refused = [r for r in responses if r.status_code != 200]
        assert {r.status_code for r in refused} == {429}
        assert {r.json()["error"]["code"] for r in refused} == {"quota_exceeded"}
        assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)


def _long_chat(seed: int, words: int) -> dict[str, object]:
    """A prompt no other shares (no prefix hit anywhere), `words` words long."""
    return {"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": " ".join(f"w{seed}-{j}"
                                                               for j in range(words))}]}


def test_each_process_waits_behind_the_prefills_the_other_sent() -> None:
    """Issue 35.3: two long prompts to one slow-prefilling engine, routed one by each process:
    the primary's view of the engine's prefill backlog holds both (a process counting its
    own would show one, or none when the follower routed the first)."""
    engine = "sim-slow-prefill"
    sims = [SimSpec(engine, MODEL, ["--prefill-tokens-per-sec", "400", "--ttft-ms", "5",
                                    "--tpot-ms", "5"])]
    settings = {**FAST_HEALTH, "load": {"interval_secs": 0.1}}
    with local_fleet(sims, policy="least_load", processes=2, picker_settings=settings) as fleet:
        with httpx.Client(base_url=fleet.envoy_url, timeout=30) as client:
            # The engine's scraped prefill counters teach both processes its rate (the
            # follower from the scrapes the primary mirrors to it).
            for seed in range(4):
                assert client.post("/v1/chat/completions",
                                   json=_long_chat(seed, 300)).status_code == 200
        wait_until(lambda: metric_values(fleet, "llm_picker_worker_prefill_tokens_per_second")
                   .get((("worker", engine),), 0.0) > 0, what="the prefill rate learned")
        time.sleep(1.0)  # the mirror sends engine scrapes at most every 0.5 s

        def ahead() -> int:
            view = loopback().get(f"{fleet.admin_url}/workers/{engine}", timeout=5).json()
            return int(view["state"]["prefill_ahead"])

        async def run() -> tuple[list[int], list[int]]:
            seen, routed_by = [], []
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=60) as client:
                sent = []
                for count, seed in enumerate((100, 101), 1):  # ~7 s of prefill each
                    before = _served_by_process(fleet)
                    sent.append(asyncio.create_task(client.post(
                        "/v1/chat/completions", json=_long_chat(seed, 3000))))
                    await asyncio.to_thread(wait_until, lambda n=count: total_in_flight(
                        fleet) == n, what=f"{count} in flight")
                    after = _served_by_process(fleet)
                    routed_by += [i for i, (a, b) in enumerate(zip(before, after, strict=True))
                                  if b > a]
                    seen.append(await asyncio.to_thread(ahead))
                responses = await asyncio.gather(*sent)
            assert all(r.status_code == 200 for r in responses), responses
            return seen, routed_by

        seen, routed_by = asyncio.run(run())
        assert sorted(routed_by) == [0, 1], routed_by  # Envoy alternates the processes
        assert seen[0] > 1000, seen
        assert seen[1] == pytest.approx(2 * seen[0], rel=0.2), seen


def test_the_status_page_shows_every_process_queues() -> None:
    """Issue 26, item 7 under --workers: requests waiting in flow control in either process
    are on the status page process 0 serves (each process queues on its own; the others
    publish their queues), as /metrics counts them."""
    flow = {"enabled": True, "trust_client_headers": True, "ttl_secs": 10,
            "saturation": {"max_in_flight_per_worker": 1}}
    sims = [SimSpec("sim-0", MODEL, SLOW)]
    with local_fleet(sims, processes=2, picker_settings={**FAST_HEALTH, "flow": flow}) as fleet:

        def flows() -> dict[str, dict[str, Any]]:
            status = loopback().get(f"{fleet.admin_url}/debug/status", timeout=5).json()
            return {row["flow"]: row for row in status["flow"]["flows"]}

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=20) as client:
                def send(flow_id: str, max_tokens: int = 1) -> asyncio.Task[httpx.Response]:
                    return asyncio.create_task(client.post(
                        "/v1/chat/completions", json=_chat(max_tokens=max_tokens),
                        headers={"x-gateway-inference-fairness-id": flow_id}))

                blocker = send("blocker", 100)  # ~4 s on the only slot
                await asyncio.to_thread(wait_until, lambda: total_in_flight(fleet) == 1, 5,
                                        "the blocker")
                before = _served_by_process(fleet)
                waiters = [send("waiting") for _ in range(4)]
                await asyncio.to_thread(
                    wait_until, lambda: sum(metric_values(fleet, "llm_picker_flow_queued")
                                            .values()) == 4, 5, "4 queued")
                spread = [b - a for a, b in zip(before, _served_by_process(fleet),
                                                strict=True)]
                assert all(spread), f"every process holds some: {spread}"
                await asyncio.to_thread(
                    wait_until, lambda: flows().get("waiting", {}).get("queued") == 4, 5,
                    "the page showing all 4")
                return [await blocker, *await asyncio.gather(*waiters)]

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 5
        wait_until(lambda: flows()["waiting"]["left"]["dispatched"] == 4, 3,
                   "4 dispatched on the page")
        assert sum(flows()["waiting"]["left"].values()) == 4
