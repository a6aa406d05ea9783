"""WorkerRegistry: membership, indices kept consistent, load under threads, stats."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from picker.errors import PickerError, UnknownWorker, WorkerConflict
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import ConnectionMode, WorkerSpec, WorkerType

MODELS = ("a", "b", "c")


def spec(port: int, **fields: object) -> WorkerSpec:
    return WorkerSpec.model_validate({"url": f"127.0.0.1:{port}", **fields})


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def test_add_get_get_by_url_remove() -> None:
    registry = WorkerRegistry()
    worker = registry.add(spec(1, id="w1", models=["m"]))
    assert isinstance(worker, Worker)
    assert (worker.id, worker.url, worker.host_port) == ("w1", url(1), "127.0.0.1:1")
    assert worker.in_flight == 0 and worker.healthy and not worker.draining and worker.routable
    assert registry.get("w1") is worker
    assert registry.get_by_url(url(1)) is worker
    assert registry.workers() == (worker,)
    assert registry.get("nope") is None and registry.get_by_url(url(2)) is None
    assert registry.remove(url(1)) is worker
    assert registry.get("w1") is None and registry.get_by_url(url(1)) is None
    assert registry.workers() == () and registry.for_model("m") == ()
    assert registry.models() == frozenset()


def test_worker_without_id_is_found_by_its_derived_id() -> None:
    registry = WorkerRegistry()
    worker = registry.add(spec(1))
    assert worker.id == spec(1).id and registry.get(worker.id) is worker


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (spec(1, id="w1"), spec(1), "already registered"),  # same url
        (spec(1, id="w1"), spec(1, id="w2"), "already registered"),  # same url, new id
        (spec(1, id="w1"), spec(2, id="w1"), "'w1'"),  # same id, new url
        (WorkerSpec(url="http://h"), WorkerSpec(url="HTTP://H:80/"), "already registered"),
    ],
)
def test_duplicates_are_conflicts_and_leave_the_registry_unchanged(
    first: WorkerSpec, second: WorkerSpec, match: str
) -> None:
    registry = WorkerRegistry([first])
    before = registry.workers()
    with pytest.raises(WorkerConflict, match=match):
        registry.add(second)
    assert registry.workers() == before
    assert registry.stats()["total_workers"] == 1


def test_remove_unknown_is_unknown_worker() -> None:
    registry = WorkerRegistry([spec(1)])
    for missing in (url(9), "127.0.0.1:1", ""):  # remove takes the normalised url only
        with pytest.raises(UnknownWorker):
            registry.remove(missing)
    registry.remove(url(1))
    with pytest.raises(UnknownWorker):
        registry.remove(url(1))
    assert issubclass(UnknownWorker, PickerError) and issubclass(WorkerConflict, PickerError)


def test_for_model_includes_workers_that_list_no_models() -> None:
    registry = WorkerRegistry([spec(1, models=["a"]), spec(2, models=["b", "a"]), spec(3)])
    assert {w.url for w in registry.for_model("a")} == {url(1), url(2), url(3)}
    assert {w.url for w in registry.for_model("b")} == {url(2), url(3)}
    assert {w.url for w in registry.for_model("zzz")} == {url(3)}
    assert registry.models() == {"a", "b"}
    # A wildcard worker serves "zzz" but does not make it a listed model (metric labels).
    assert [registry.has_model(m) for m in ("a", "b", "zzz")] == [True, True, False]
    registry.remove(url(3))
    assert registry.for_model("zzz") == ()
    assert {w.url for w in registry.for_model("a")} == {url(1), url(2)}


def test_for_model_returns_unhealthy_workers_too() -> None:
    registry = WorkerRegistry([spec(1, models=["a"])])
    worker = registry.workers()[0]
    registry.set_healthy(worker, False)
    assert registry.for_model("a") == (worker,) and not worker.routable


def test_listeners_hear_adds_and_removes_but_not_conflicts() -> None:
    events: list[tuple[str, str]] = []

    class Listener:
        def worker_added(self, worker: Worker) -> None:
            events.append(("added", worker.url))

        def worker_removed(self, worker: Worker) -> None:
            events.append(("removed", worker.url))

    registry = WorkerRegistry()
    registry.add_listener(Listener())
    registry.add(spec(1))
    with pytest.raises(WorkerConflict):
        registry.add(spec(1))
    registry.remove(url(1))
    with pytest.raises(UnknownWorker):
        registry.remove(url(1))
    assert events == [("added", url(1)), ("removed", url(1))]


def test_replace_spec_reindexes_and_keeps_identity() -> None:
    registry = WorkerRegistry([spec(1, id="w", models=["a"])])
    worker = registry.workers()[0]
    registry.replace_spec(worker, worker.spec.updated(models=["b"], worker_type="decode"))
    assert registry.for_model("b") == (worker,) and registry.for_model("a") == ()
    assert registry.by_type(WorkerType.DECODE) == (worker,)
    assert registry.by_type(WorkerType.REGULAR) == ()
    with pytest.raises(ValueError, match="cannot change"):
        registry.replace_spec(worker, spec(2, id="w"))
    with pytest.raises(ValueError, match="cannot change"):
        registry.replace_spec(worker, spec(1, id="other"))


def test_stats_shape_and_numbers() -> None:
    registry = WorkerRegistry()
    assert registry.stats() == {
        "total_workers": 0, "healthy_workers": 0, "total_models": 0, "total_load": 0,
        "by_type": {"regular": 0, "prefill": 0, "decode": 0},
    }
    registry = WorkerRegistry([spec(1, models=["a", "b"]), spec(2, worker_type="prefill"),
                               spec(3, worker_type="decode", models=["a"]),
                               spec(4, worker_type="decode", models=["c"])])
    first, second, *_ = registry.workers()
    registry.acquire(first)
    registry.acquire(first)
    registry.acquire(second)
    registry.set_healthy(second, False)
    assert registry.stats() == {
        "total_workers": 4, "healthy_workers": 3, "total_models": 3, "total_load": 3,
        "by_type": {"regular": 1, "prefill": 1, "decode": 2},
    }
    registry.release(first)
    registry.remove(url(4))
    stats = registry.stats()
    assert (stats["total_workers"], stats["total_models"], stats["total_load"]) == (3, 2, 2)
    assert stats["by_type"]["decode"] == 1


@pytest.mark.parametrize(
    ("rate", "sent", "ahead"),
    [
        (None, [500.0], 0.0),  # speed unknown: nothing could use it
        (1000.0, [500.0], 500.0),
        (1000.0, [500.0, 0.0, 300.0], 800.0),  # a fully cached request adds no work
        (1000.0, [], 0.0),
    ],
)
def test_sent_prefill_is_ahead_until_the_engine_had_time_for_it(
        rate: float | None, sent: list[float], ahead: float) -> None:
    registry = WorkerRegistry([spec(1)])
    worker = registry.workers()[0]
    if rate is not None:
        registry.observe(worker, Observation(prompt_tokens=int(rate), cached_tokens=0,
                                             ttft_secs=1.0))
    for tokens in sent:
        registry.sent_prefill(worker, tokens)
    now = time.monotonic()
    assert worker.prefill_ahead(now) == pytest.approx(ahead, abs=5.0)  # 1 token/ms drains
    assert worker.prefill_ahead(now + 10.0) == 0.0


class RegistryMachine(RuleBasedStateMachine):
    """Random add/remove sequences against a dict model; every index must match it always."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = WorkerRegistry()
        self.model: dict[str, WorkerSpec] = {}

    @rule(port=st.integers(1, 12), models=st.lists(st.sampled_from(MODELS), unique=True,
                                                   max_size=2),
          worker_type=st.sampled_from(list(WorkerType)),
          mode=st.sampled_from(list(ConnectionMode)))
    def add(self, port: int, models: list[str], worker_type: WorkerType,
            mode: ConnectionMode) -> None:
        new = spec(port, models=models, worker_type=worker_type, connection_mode=mode)
        if new.url in self.model:
            with pytest.raises(WorkerConflict):
                self.registry.add(new)
        else:
            self.registry.add(new)
            self.model[new.url] = new

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(self.model)))
        assert self.registry.remove(target).url == target
        del self.model[target]

    @rule(port=st.integers(1, 12))
    def remove_maybe_unknown(self, port: int) -> None:
        if url(port) in self.model:
            self.registry.remove(url(port))
            del self.model[url(port)]
        else:
            with pytest.raises(UnknownWorker):
                self.registry.remove(url(port))

    @invariant()
    def indices_match_the_model(self) -> None:
        registry, live = self.registry, self.model
        assert {w.url for w in registry.workers()} == set(live)
        assert len(registry.workers()) == len(live)
        for model in (*MODELS, "unlisted"):
            served = registry.for_model(model)
            assert len(served) == len({w.url for w in served})  # no worker twice
            assert {w.url for w in served} == {u for u, s in live.items() if s.serves(model)}
        for worker_type in WorkerType:
            expected = {u for u, s in live.items() if s.worker_type is worker_type}
            assert {w.url for w in registry.by_type(worker_type)} == expected
        for mode in ConnectionMode:
            expected = {u for u, s in live.items() if s.connection_mode is mode}
            assert {w.url for w in registry.by_connection_mode(mode)} == expected
        assert registry.models() == {m for s in live.values() for m in s.models}
        for u, s in live.items():
            assert registry.get(s.id or "") is registry.get_by_url(u) is not None
        stats = registry.stats()
        assert stats["total_workers"] == len(live)
        assert stats["total_models"] == len(registry.models())
        assert sum(stats["by_type"].values()) == len(live)


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_load_counters_are_exact_under_threads() -> None:
    registry = WorkerRegistry([spec(1), spec(2)])
    workers = registry.workers()
    peak = [0]

    def hammer() -> None:
        for i in range(10_000):
            worker = workers[i % 2]
            registry.acquire(worker)
            peak[0] = max(peak[0], worker.in_flight)
            registry.release(worker)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        assert run_threads(*[hammer] * 8) == []
    finally:
        sys.setswitchinterval(interval)
    assert [w.in_flight for w in workers] == [0, 0]
    assert registry.stats()["total_load"] == 0
    assert peak[0] >= 1


def test_concurrent_add_remove_with_readers() -> None:
    """Readers take no lock: every tuple they see must be a consistent snapshot."""
    registry = WorkerRegistry([spec(1, models=["a"]), spec(2, models=["b"])])
    stable = registry.workers()
    done = threading.Event()

    def churn(offset: int) -> None:
        def run() -> None:
            for i in range(150):
                port = 5000 + offset + i
                registry.add(spec(port, models=["a"] if i % 2 else [],
                                  worker_type=WorkerType.PREFILL))
                registry.remove(url(port))
        return run

    def reader() -> None:
        while not done.is_set():
            for worker in registry.for_model("a"):
                assert worker.spec.serves("a")
            assert all(w.spec.worker_type is WorkerType.PREFILL
                       for w in registry.by_type(WorkerType.PREFILL))
            stats = registry.stats()
            assert stats["total_workers"] >= 2
            assert registry.get_by_url(url(1)) is stable[0]

    def churners() -> None:
        try:
            assert run_threads(churn(0), churn(1000), churn(2000)) == []
        finally:
            done.set()

    def hammer() -> None:
        for _ in range(5000):
            registry.acquire(stable[0])
            registry.release(stable[0])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave threads far more often than every 5 ms
    try:
        assert run_threads(churners, reader, reader, hammer, hammer) == []
    finally:
        sys.setswitchinterval(interval)
    assert registry.workers() == stable
    assert registry.by_type(WorkerType.PREFILL) == ()
    assert [w.in_flight for w in stable] == [0, 0]
