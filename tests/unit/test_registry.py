"""WorkerRegistry: membership, indices kept consistent, load under threads, stats."""

from __future__ import annotations

import random
import threading

import pytest

from picker.errors import UnknownWorker, WorkerConflict
from picker.registry import WorkerRegistry
from picker.workers import ConnectionMode, WorkerSpec, WorkerType


def spec(port: int, **fields: object) -> WorkerSpec:
    return WorkerSpec.model_validate({"url": f"127.0.0.1:{port}", **fields})


def test_add_get_remove() -> None:
    registry = WorkerRegistry()
    worker = registry.add(spec(1, id="w1", models=["m"]))
    assert registry.get("w1") is worker
    assert registry.get_by_url("http://127.0.0.1:1") is worker
    assert registry.remove("http://127.0.0.1:1") is worker
    assert registry.get("w1") is None and registry.workers() == ()


def test_duplicates_and_unknowns_are_errors() -> None:
    registry = WorkerRegistry([spec(1, id="w1")])
    with pytest.raises(WorkerConflict, match="already registered"):
        registry.add(spec(1))
    with pytest.raises(WorkerConflict, match="'w1'"):
        registry.add(spec(2, id="w1"))
    with pytest.raises(UnknownWorker):
        registry.remove("http://127.0.0.1:9")


def test_for_model_includes_any_model_workers() -> None:
    registry = WorkerRegistry([spec(1, models=["a"]), spec(2, models=["b"]), spec(3)])
    assert {w.url[-1] for w in registry.for_model("a")} == {"1", "3"}
    assert {w.url[-1] for w in registry.for_model("zzz")} == {"3"}
    assert registry.models() == {"a", "b"}


def test_indices_stay_consistent_over_random_changes() -> None:
    """Compare every index with a recomputation from scratch after each add/remove."""
    rng = random.Random(7)
    registry = WorkerRegistry()
    live: dict[str, WorkerSpec] = {}
    for step in range(400):
        if live and rng.random() < 0.4:
            url = rng.choice(sorted(live))
            registry.remove(url)
            del live[url]
        else:
            new = spec(1000 + step, models=rng.sample(["a", "b", "c"], rng.randint(0, 2)),
                       worker_type=rng.choice(list(WorkerType)),
                       connection_mode=rng.choice(list(ConnectionMode)))
            registry.add(new)
            live[new.url] = new
        for model in ("a", "b", "c", "d"):
            expected = {u for u, s in live.items() if s.serves(model)}
            assert {w.url for w in registry.for_model(model)} == expected
        for worker_type in WorkerType:
            expected = {u for u, s in live.items() if s.worker_type is worker_type}
            assert {w.url for w in registry.by_type(worker_type)} == expected
        for mode in ConnectionMode:
            expected = {u for u, s in live.items() if s.connection_mode is mode}
            assert {w.url for w in registry.by_connection_mode(mode)} == expected


def test_stats() -> None:
    registry = WorkerRegistry([spec(1, models=["a", "b"]), spec(2, worker_type="prefill"),
                               spec(3, worker_type="decode", models=["a"])])
    registry.acquire(registry.workers()[0])
    registry.set_healthy(registry.workers()[1], False)
    assert registry.stats() == {
        "total_workers": 3, "healthy_workers": 2, "total_models": 2, "total_load": 1,
        "by_type": {"regular": 1, "prefill": 1, "decode": 1},
    }


def test_load_counters_are_exact_under_threads() -> None:
    registry = WorkerRegistry([spec(1), spec(2)])
    workers = registry.workers()

    def hammer() -> None:
        for i in range(5000):
            worker = workers[i % 2]
            registry.acquire(worker)
            registry.release(worker)

    def churn() -> None:
        for i in range(200):
            registry.add(spec(5000 + i))
            registry.remove(f"http://127.0.0.1:{5000 + i}")

    threads = [threading.Thread(target=hammer) for _ in range(8)] + [threading.Thread(target=churn)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [w.in_flight for w in workers] == [0, 0]
    assert len(registry.workers()) == 2
