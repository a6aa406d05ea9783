"""picker.processes: the in-flight table shared by the processes of one picker, the group's
settings, and the registry feed mirroring the primary's fleet (over a real Unix socket)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_picker.supervisor import _GROUP_PREFIX, _hold_lock, _remove_orphaned_groups
from picker.config import GROUP_ENV, load_config
from picker.errors import ConfigError
from picker.fleet.engine_load import EngineCounter, EngineLoad
from picker.fleet.registry import WorkerRegistry
from picker.fleet.speed import PrefillBacklog
from picker.fleet.worker_spec import WorkerSpec
from picker.processes.backlog import SharedBacklog
from picker.processes.counts import SharedCounts
from picker.processes.group import ProcessGroup
from picker.processes.mirror import StateFollower, StatePublisher, WorkerState
from picker.routing.admission import LimitSettings
from picker.routing.flow import FlowSettings
from picker.runtime import PickerRuntime
from tests.waiting import eventually


def _table(tmp_path: Path, rows: int = 2, columns: int = 4) -> list[SharedCounts]:
    path = tmp_path / "in_flight"
    SharedCounts.create(path, rows, columns)
    return [SharedCounts(path, rows, row, columns) for row in range(rows)]


def _backlogs(tmp_path: Path, rows: int = 2, columns: int = 4) -> list[SharedBacklog]:
    path = tmp_path / "prefill_backlog"
    SharedBacklog.create(path, rows, columns)
    return [SharedBacklog(path, rows, row, columns) for row in range(rows)]


def test_each_process_writes_its_row_and_reads_the_sum(tmp_path: Path) -> None:
    primary, follower = _table(tmp_path)
    primary.set_own(1, 3)
    follower.set_own(1, 2)
    follower.set_own(2, 7)
    assert (primary.total(1), follower.total(1)) == (5, 5)
    assert primary.total(2) == 7 and primary.total(0) == 0
    follower.set_own(1, 0)
    assert primary.total(1) == 3


def test_a_retired_column_is_reused_only_once_nobody_holds_it(tmp_path: Path) -> None:
    primary, follower = _table(tmp_path, columns=2)
    assert [primary.allocate(), primary.allocate()] == [0, 1]
    follower.set_own(0, 1)  # the follower still finishes a request on the removed worker
    primary.retire(0)
    with pytest.raises(OverflowError, match="more than 2 workers"):
        primary.allocate()
    follower.set_own(0, 0)
    assert primary.allocate() == 0
    with pytest.raises(RuntimeError, match="only the primary"):
        follower.allocate()


def test_registries_sharing_a_table_see_each_others_in_flight(tmp_path: Path) -> None:
    spec = WorkerSpec(url="http://127.0.0.1:8001", id="w1")
    primary_counts, follower_counts = _table(tmp_path)
    backlogs = _backlogs(tmp_path)
    primary, follower = WorkerRegistry(), WorkerRegistry()
    primary.share_in_flight(primary_counts, backlogs[0])
    follower.share_in_flight(follower_counts, backlogs[1])
    mine = primary.add(spec)
    theirs = follower.add(spec, column=mine.column)
    primary.acquire(mine)
    follower.acquire(theirs)
    follower.acquire(theirs)
    assert mine.in_flight == theirs.in_flight == 3
    follower.release(theirs)
    assert mine.in_flight == 2
    with pytest.raises(RuntimeError, match="before any worker"):
        primary.share_in_flight(primary_counts, backlogs[0])


def test_the_processes_backlog_is_one_queue_drained_once(tmp_path: Path) -> None:
    """Two processes each send 1000 uncached tokens to one engine (1000 tokens/s), 0.1 s
    apart: 0.5 s after the first 1500 are left, as of one queue; two queues drained at the
    full rate each would leave 1000. The bound is the sum of both rows' open tokens."""
    primary, follower = _backlogs(tmp_path)
    rate = 1000.0
    primary.write(1, primary.read(1).plus(1000.0, rate, 10.0), 1000.0)
    follower.write(1, follower.read(1).plus(1000.0, rate, 10.1), 1000.0)
    combined = primary.read(1)
    assert combined == follower.read(1)
    assert (combined.tokens, combined.at, combined.open_tokens) == pytest.approx(
        (1900.0, 10.1, 2000.0))
    assert combined.left(rate, 10.5) == pytest.approx(1500.0)
    # The follower's request ends (first token): the queue is what the primary's holds.
    follower.write(1, follower.read(1).ended(1000.0, rate, 10.6), -1000.0)
    after = primary.read(1)
    assert (after.tokens, after.at, after.open_tokens) == pytest.approx((1000.0, 10.6, 1000.0))
    assert primary.read(0) == PrefillBacklog() and primary.read(2) == PrefillBacklog()


_SEND = """
import sys
import time
from pathlib import Path
from picker.fleet.registry import WorkerRegistry
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import WorkerSpec
from picker.processes.backlog import SharedBacklog
from picker.processes.counts import SharedCounts

directory, row = Path(sys.argv[1]), int(sys.argv[2])
registry = WorkerRegistry()
registry.share_in_flight(SharedCounts(directory / "in_flight", 2, row, 4),
                         SharedBacklog(directory / "prefill_backlog", 2, row, 4))
worker = registry.add(WorkerSpec(url="http://127.0.0.1:8001", id="w1"), column=1)
registry.observe(worker, Observation(prompt_tokens=1000, cached_tokens=0, ttft_secs=100.0))
registry.sent_prefill(worker, float(sys.argv[3]))
print(round(worker.prefill_ahead(time.monotonic())))
"""


def test_two_os_processes_see_each_others_prefill_backlog(tmp_path: Path) -> None:
    """Two real processes map the tables (as `serve --workers 2` does) and each routes one
    long prompt to the same engine (learned at 10 tokens/s): the second sees both."""
    _table(tmp_path)
    _backlogs(tmp_path)
    seen = []
    for row, tokens in ((0, 6000), (1, 4000)):
        done = subprocess.run(
            [sys.executable, "-c", _SEND, str(tmp_path), str(row), str(tokens)],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        seen.append(int(done.stdout))
    # 10 tokens/s drain a few tokens between the processes' sends.
    assert seen[0] == pytest.approx(6000, abs=50)
    assert seen[1] == pytest.approx(10000, abs=100)


def test_limits_are_split_over_the_processes() -> None:
    group = ProcessGroup(0, 3, Path("/x"), (1, 2, 3))
    limits = LimitSettings(max_concurrent_requests=10, queue_size=4)
    parts = [ProcessGroup(i, 3, Path("/x"), (1, 2, 3)).share_of(limits) for i in range(3)]
    assert [p.max_concurrent_requests for p in parts] == [4, 3, 3]
    assert [p.queue_size for p in parts] == [2, 1, 1]
    assert group.share_of(LimitSettings()) == LimitSettings()  # unlimited stays unlimited
    tiny = ProcessGroup(2, 3, Path("/x"), (1, 2, 3)).share_of(
        LimitSettings(max_concurrent_requests=1))
    assert tiny.max_concurrent_requests == 1  # never 0, which would mean unlimited


def test_flow_queue_bounds_are_split_over_the_processes_and_quotas_are_not() -> None:
    flow = FlowSettings.model_validate({
        "enabled": True, "max_queued": 10, "band_max_queued": {-1: 4},
        "quotas": {"a": {"requests_per_minute": 7, "tokens_per_minute": 0}},
        "default_quota": {"tokens_per_minute": 3000}})
    parts = [ProcessGroup(i, 3, Path("/x"), (1, 2, 3)).share_of_flow(flow) for i in range(3)]
    assert [p.max_queued for p in parts] == [4, 3, 3]
    assert [p.band_max_queued[-1] for p in parts] == [2, 1, 1]
    # Quotas are spent in the group's shared table (picker.routing.flow.quota_table).
    assert {p.quotas["a"].requests_per_minute for p in parts} == {7}
    assert {p.default_quota.tokens_per_minute for p in parts} == {3000}


def test_group_travels_in_one_variable() -> None:
    group = ProcessGroup(1, 2, Path("/tmp/g"), (4000, 4001))
    assert ProcessGroup.from_env({GROUP_ENV: group.to_env()}) == group
    assert ProcessGroup.from_env({}) is None
    with pytest.raises(ConfigError, match=GROUP_ENV):
        ProcessGroup.from_env({GROUP_ENV: '{"index": 1}'})
    settings = group.pick_sharing()
    assert settings.listen == "127.0.0.1:4001" and len(settings.peers) == 2


async def test_follower_mirrors_the_primarys_fleet(tmp_path: Path) -> None:
    primary_counts, follower_counts = _table(tmp_path, columns=8)
    backlogs = _backlogs(tmp_path, columns=8)
    primary, follower = WorkerRegistry(), WorkerRegistry()
    primary.share_in_flight(primary_counts, backlogs[0])
    follower.share_in_flight(follower_counts, backlogs[1])
    a = primary.add(WorkerSpec(url="http://127.0.0.1:8001", id="a", models=["m"]))
    publisher = StatePublisher(primary, tmp_path / "feed.sock", period_secs=0.005)
    mirror = StateFollower(follower, tmp_path / "feed.sock")
    await mirror.start()  # before the primary listens: it retries
    await asyncio.sleep(0.1)
    assert not mirror.synced
    await publisher.start()
    try:
        await eventually(lambda: mirror.synced, timeout=2.0, what="the first snapshot")
        copy = follower.get("a")
        assert copy is not None and copy.spec == a.spec and copy.column == a.column

        b = primary.add(WorkerSpec(url="http://127.0.0.1:8002", id="b", api_key="sk-b"))
        primary.set_healthy(a, False)
        load = EngineLoad(scraped_at=12.5, waiting=3.0,
                          counters={EngineCounter.PROMPT_TOKENS: 100.0})
        primary.set_engine_load(b, load)
        await eventually(lambda: follower.get("b") is not None
                         and not follower.get("a").healthy,  # type: ignore[union-attr]
                         timeout=2.0, what="b added, a unhealthy")
        copy_b = follower.get("b")
        assert copy_b is not None and copy_b.engine == load and copy_b.column == b.column
        # The write-only key travels too: followers send it to the engine (it was lost).
        assert copy_b.spec.api_key is not None
        assert copy_b.spec.api_key.get_secret_value() == "sk-b"
        primary.replace_spec(a, a.spec.model_copy(update={"models": ["m", "n"]}))
        await eventually(lambda: follower.models() == {"m", "n"}, timeout=2.0,
                         what="the new spec")

        primary.acquire(b)  # in flight in the primary: the follower sees it
        assert follower.get("b").in_flight == 1  # type: ignore[union-attr]
        primary.set_draining(b)
        await eventually(lambda: follower.get("b").draining,  # type: ignore[union-attr]
                         timeout=2.0, what="draining")
        primary.release(b)
        primary.remove(b.url)
        await eventually(lambda: follower.get("b") is None, timeout=2.0, what="b removed")
        assert [w.id for w in follower.workers()] == ["a"]
    finally:
        await mirror.stop()
        await publisher.stop()


async def test_a_worker_re_added_under_a_new_column_is_replaced(tmp_path: Path) -> None:
    counts, backlogs = _table(tmp_path, columns=8), _backlogs(tmp_path, columns=8)
    follower = WorkerRegistry()
    follower.share_in_flight(counts[1], backlogs[1])
    mirror = StateFollower(follower, tmp_path / "unused.sock")
    primary = WorkerRegistry()
    primary.share_in_flight(counts[0], backlogs[0])
    spec = WorkerSpec(url="http://127.0.0.1:8001", id="a")

    def state(column: int, draining: bool = False) -> WorkerState:
        return WorkerState(spec.model_dump(mode="json"), column, True, draining, None)

    mirror.apply([state(0)])
    old = follower.get("a")
    follower.acquire(old)  # type: ignore[arg-type]
    mirror.apply([state(3)])
    new = follower.get("a")
    assert new is not None and new is not old and new.column == 3
    assert new.in_flight == 0 and counts[0].total(0) == 1  # the old request still counted
    # Drained, then registered anew at the same url and column between two snapshots: the
    # follower must not keep routing around a worker it thinks is draining.
    mirror.apply([state(3, draining=True)])
    drained = follower.get("a")
    mirror.apply([state(3)])
    again = follower.get("a")
    assert again is not None and again is not drained and not again.draining


_COUNT = """
import sys
import time
from pathlib import Path
from picker.fleet.registry import WorkerRegistry
from picker.observe.metrics import PickerMetrics
metrics = PickerMetrics(WorkerRegistry(), Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    metrics.decisions.labels("least_load", "w1").inc()
metrics.requests.labels("completed").inc(int(sys.argv[2]))
if sys.argv[3] == "read":
    print(metrics.by_worker("llm_picker_decisions")["w1"])
    print(b'llm_picker_requests_total{outcome="completed"} 5.0' in metrics.render())
"""


def test_one_metrics_endpoint_sums_every_process(tmp_path: Path) -> None:
    """Counters of each process land in prometheus_client's multiprocess files (the variable
    is set before the import, as the supervisor does); the primary's render and the status
    page's per-worker totals sum them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count, role in ((2, "write"), (3, "read")):
        done = subprocess.run([sys.executable, "-c", _COUNT, str(tmp_path), str(count), role],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5.0", "True"]


async def test_a_follower_waiting_for_the_fleet_stops_when_asked(tmp_path: Path) -> None:
    """A follower waits (up to a minute) for process 0's first snapshot before serving; a
    SIGTERM meanwhile (process 0 failed at start-up) used to wait that minute out."""
    SharedCounts.create(tmp_path / "in_flight", 2)
    SharedBacklog.create(tmp_path / "prefill_backlog", 2)
    (tmp_path / "metrics").mkdir()
    follower = PickerRuntime(load_config(), group=ProcessGroup(1, 2, tmp_path, (1, 2)))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = asyncio.get_running_loop().time()
    assert not await follower.start_unless(stop)
    assert asyncio.get_running_loop().time() - started < 2
    assert not follower.discovery_synced


def test_only_groups_no_process_holds_are_removed(tmp_path: Path) -> None:
    """A group is gone when nobody holds its lock; pids say nothing across containers."""
    live, orphaned, starting = (tmp_path / f"{_GROUP_PREFIX}{name}"
                                for name in ("live", "orphaned", "starting"))
    for directory in (live, orphaned, starting):
        directory.mkdir()
    held = _hold_lock(live)
    os.close(_hold_lock(orphaned))  # its processes are gone
    (tmp_path / "llm-picker-other").mkdir()  # not a group directory
    try:
        _remove_orphaned_groups(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"{_GROUP_PREFIX}live", f"{_GROUP_PREFIX}starting", "llm-picker-other"]
    finally:
        os.close(held)


def test_a_stop_asked_for_while_children_start_is_a_clean_stop() -> None:
    """A child still starting when SIGTERM comes dies of the signal itself (no handler yet):
    the group was asked to stop, so it exits 0; a child dying unasked is still a failure."""
    import signal
    import subprocess
    import sys

    from llm_picker.supervisor import _Group

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT,
                                                       signal.SIGHUP)}
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    try:
        group = _Group()
        group.children = [subprocess.Popen(sleeper) for _ in range(2)]
        signal.raise_signal(signal.SIGTERM)  # the supervisor's own SIGTERM, forwarded
        assert group.supervise(stop_secs=5) == 0
        assert [child.returncode for child in group.children] == [-signal.SIGTERM] * 2
        crashed = _Group()
        crashed.children = [subprocess.Popen(sleeper),
                            subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])]
        assert crashed.supervise(stop_secs=5) == 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
