"""Circuit breaker state machine on a controlled clock."""

from __future__ import annotations

from picker.fleet.circuit import CircuitBreaker, CircuitSettings, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**settings: object) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    config = CircuitSettings.model_validate({"failure_threshold": 3, "success_threshold": 2,
                                             "open_duration_secs": 10, "window_secs": 5,
                                             **settings})
    return CircuitBreaker(config, clock), clock


def test_opens_after_consecutive_failures_and_blocks() -> None:
    cb, _ = breaker()
    for _ in range(2):
        cb.record(False)
    assert cb.state is CircuitState.CLOSED and cb.allows(0)
    cb.record(False)
    assert cb.state is CircuitState.OPEN and not cb.allows(0)


def test_success_resets_the_count_and_old_failures_leave_the_window() -> None:
    cb, clock = breaker()
    cb.record(False)
    cb.record(False)
    cb.record(True)
    cb.record(False)
    assert cb.state is CircuitState.CLOSED
    cb.record(False)
    clock.now += 6  # first failure of this run is now outside the 5 s window
    cb.record(False)
    assert cb.state is CircuitState.CLOSED


def test_half_open_probe_then_close_or_reopen() -> None:
    cb, clock = breaker()
    for _ in range(3):
        cb.record(False)
    clock.now += 10
    assert cb.allows(0) and cb.state is CircuitState.HALF_OPEN
    assert not cb.allows(1)  # one probe in flight already
    cb.record(True)
    assert cb.state is CircuitState.HALF_OPEN
    cb.record(True)
    assert cb.state is CircuitState.CLOSED
    for _ in range(3):
        cb.record(False)
    clock.now += 10
    assert cb.allows(0)
    cb.record(False)
    assert cb.state is CircuitState.OPEN and not cb.allows(0)


def test_disabled_never_blocks() -> None:
    cb, _ = breaker(enabled=False)
    for _ in range(10):
        cb.record(False)
    assert cb.allows(5)
