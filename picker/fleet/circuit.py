"""Per-worker circuit breaker fed by request outcomes (the passive health signal).

closed --(failure_threshold consecutive failures within window)--> open
open --(open_duration elapsed)--> half_open: up to `half_open_probes` requests let through
half_open --(success_threshold successes)--> closed;  --(any failure)--> open again

Active health checks notice a dead worker once per interval; the breaker notices it within a
few failed requests, so under load it is usually the first to eject.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from pydantic import Field

from picker.strict import StrictModel

__all__ = ["CircuitBreaker", "CircuitSettings", "CircuitState"]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitSettings(StrictModel):

    enabled: bool = True
    # Three consecutive failed requests: Envoy does not retry onto another worker (ORIGINAL_DST
    # reconnects to the same one), so every failure before the breaker opens is a client error.
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    open_duration_secs: float = Field(default=10.0, gt=0)
    window_secs: float = Field(default=30.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)


class CircuitBreaker:
    """Thread-safe; `allows` is on the hot path and takes no lock while the circuit is closed."""

    __slots__ = ("_settings", "_clock", "_lock", "state", "_failures", "_first_failure",
                 "_successes", "_opened_at")

    def __init__(self, settings: CircuitSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._first_failure = 0.0
        self._successes = 0
        self._opened_at = 0.0

    def allows(self, in_flight: int) -> bool:
        """May a new request go to this worker now?

        Asking does not consume anything (every candidate is asked on every pick): half-open
        admits probes only while fewer than `half_open_probes` requests are in flight there.
        """
        if self.state is CircuitState.CLOSED or not self._settings.enabled:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self._settings.open_duration_secs:
                return False
            with self._lock:
                if self.state is CircuitState.OPEN:
                    self.state, self._successes = CircuitState.HALF_OPEN, 0
        return in_flight < self._settings.half_open_probes

    def record(self, success: bool) -> None:
        with self._lock:
            now = self._clock()
            if success:
                self._on_success()
            elif self.state is CircuitState.HALF_OPEN:
                self._open(now)
            else:
                if not self._failures or now - self._first_failure > self._settings.window_secs:
                    self._failures, self._first_failure = 0, now
                self._failures += 1
                if self._failures >= self._settings.failure_threshold:
                    self._open(now)

    def _on_success(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self._successes += 1
            if self._successes >= self._settings.success_threshold:
                self.state, self._failures = CircuitState.CLOSED, 0
        else:
            self._failures = 0

    def _open(self, now: float) -> None:
        self.state, self._opened_at, self._failures = CircuitState.OPEN, now, 0

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state.value, "consecutive_failures": self._failures}
