"""The lease book on its own: a registry, metrics and limits, no runtime.

What it promises (picker.routing.leases): one admission slot per lease, load back to exactly
zero whatever the order and number of reports, a moved lease's slot follows it, the outcome
tells the circuit breaker, and stale leases expire."""

from __future__ import annotations

import time

import pytest

from picker.errors import Overloaded
from picker.fleet.circuit import CircuitSettings
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.routing.admission import LimitSettings
from picker.routing.leases import LeaseBook
from picker.routing.outcome import Outcome
from picker.routing.router import Choice


def book(limit: int = 0, **circuit: object) -> tuple[LeaseBook, WorkerRegistry, PickerMetrics]:
    workers = WorkerRegistry(circuit=CircuitSettings.model_validate(circuit))
    for name in ("a", "b"):
        workers.add(WorkerSpec(url=f"http://{name}:1", id=name, models=["m"]))
    metrics = PickerMetrics(workers)
    return LeaseBook(workers, LimitSettings(max_concurrent_requests=limit), metrics), workers, \
        metrics


def choice(worker: Worker, uncached: float = 0.0) -> Choice:
    return Choice(worker, "round_robin", None, None, uncached)


def worker(workers: WorkerRegistry, worker_id: str) -> Worker:
    found = workers.get(worker_id)
    assert found is not None
    return found


def test_a_lease_holds_one_slot_until_its_first_release() -> None:
    leases, workers, metrics = book()
    a = worker(workers, "a")
    leases.admit_now()
    lease = leases.open(choice(a, uncached=100.0))
    assert (a.in_flight, leases.active) == (1, 1)
    assert lease.release(Outcome.COMPLETED) is True
    assert lease.release(Outcome.CANCELLED) is False  # later reports change nothing
    assert (a.in_flight, leases.active, lease.open) == (0, 0, False)
    assert leases.outcomes == {Outcome.COMPLETED: 1}
    assert metrics.registry.get_sample_value(
        "llm_picker_requests_total", {"outcome": "completed"}) == 1


def test_a_misspelt_outcome_is_an_error_not_a_silent_no_op() -> None:
    leases, workers, _ = book()
    leases.admit_now()
    lease = leases.open(choice(worker(workers, "a")))
    with pytest.raises(ValueError, match="complted"):
        lease.release("complted")  # type: ignore[arg-type]
    assert lease.open  # still held: the right report can still come
    assert lease.release(Outcome.COMPLETED)


def test_the_admission_limit_counts_open_leases() -> None:
    leases, workers, _ = book(limit=1)
    leases.admit_now()
    lease = leases.open(choice(worker(workers, "a")))
    with pytest.raises(Overloaded):
        leases.admit_now()
    lease.release(Outcome.COMPLETED)
    leases.admit_now()  # the slot came back
    leases.cancel_admission()  # no worker fitted: given back without a lease
    assert leases.active == 0


def test_a_moved_lease_takes_its_slot_and_prefill_backlog_along() -> None:
    leases, workers, _ = book()
    a, b = worker(workers, "a"), worker(workers, "b")
    leases.admit_now()
    lease = leases.open(choice(a, uncached=64.0), fallbacks=[b])
    assert lease.destination == "a:1,b:1"
    assert lease.move_to(b) and not lease.move_to(b)
    assert (a.in_flight, b.in_flight, lease.worker) == (0, 1, b)
    lease.release(Outcome.COMPLETED)
    assert (a.in_flight, b.in_flight) == (0, 0)


@pytest.mark.parametrize(("outcome", "opens"), [
    (Outcome.UPSTREAM_ERROR, True), (Outcome.CANCELLED, False), (Outcome.COMPLETED, False)])
def test_only_upstream_errors_open_the_circuit(outcome: Outcome, opens: bool) -> None:
    leases, workers, _ = book(failure_threshold=2)
    a = worker(workers, "a")
    for _ in range(2):
        leases.admit_now()
        leases.open(choice(a)).release(outcome)
    assert a.routable is not opens


def test_stale_leases_expire_once() -> None:
    leases, workers, _ = book()
    leases.admit_now()
    lease = leases.open(choice(worker(workers, "a")))
    assert leases.expire(now=lease.started + 1.0) == 0
    assert leases.expire(now=lease.started + LimitSettings().timeout_secs + 1) == 1
    assert leases.expire(now=lease.started + LimitSettings().timeout_secs + 2) == 0
    assert leases.outcomes == {Outcome.TIMEOUT: 1} and leases.active == 0


def slow_engine(workers: WorkerRegistry, worker_id: str) -> Worker:
    """A worker whose engine prefills 100 tokens a second: sent work stays ahead for a while."""
    from picker.fleet.speed import Observation

    found = worker(workers, worker_id)
    workers.observe(found, Observation(prompt_tokens=100, cached_tokens=0, ttft_secs=1.0))
    return found


def test_the_first_token_ends_the_prompts_prefill_work_before_the_request_ends() -> None:
    """Issue 35.3: a streamed answer's prompt is prefilled at its first token; counting it as
    work ahead until the request ends would make a long answer's engine look busy."""
    leases, workers, _ = book()
    a = slow_engine(workers, "a")
    leases.admit_now()
    lease = leases.open(choice(a, uncached=2000.0))
    assert a.prefill_ahead(time.monotonic()) > 1500.0
    lease.first_token()
    lease.first_token()  # once only: the second changes nothing
    assert a.prefill_ahead(time.monotonic()) == 0.0 and a.in_flight == 1
    lease.release(Outcome.COMPLETED)
    leases.admit_now()
    other = leases.open(choice(a, uncached=500.0))
    assert a.prefill_ahead(time.monotonic()) == pytest.approx(500.0, abs=5.0)  # not -1500
    other.release(Outcome.COMPLETED)
