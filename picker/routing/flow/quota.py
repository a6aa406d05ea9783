"""Per-flow budgets: requests per minute and tokens per minute, as LiteLLM's per-key and
per-team rpm/tpm limits and Envoy AI Gateway's token QuotaPolicy express them.

A flow may spend at most its budget in any rolling minute (in one-second steps; the spending
lives in a QuotaTable). A request must fit one request and its prompt tokens in what is left,
else it is refused with 429 and a Retry-After saying when enough of the minute's spending will
have left the window; a request larger than a whole minute's budget waits for a minute with no
spending rather than being refused forever. Its generated tokens are charged when the response
ends and may take the flow past its budget: a flow that generates much waits longer before its
next request. A request refused after its charge (shed, expired, gone) gets the charge back.

Under `serve --workers N` every process reads and writes the group's one table, so each flow
has one budget however its requests spread over the processes; replicas each keep their own
table and enforce the whole budget each (docs/benchmarks.md measures the drift).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from picker.errors import QuotaExceeded
from picker.routing.flow.quota_table import WINDOW, QuotaTable
from picker.routing.flow.settings import FlowSettings

__all__ = ["QuotaBook"]


class QuotaBook:
    """Thread-safe (the table's writes are locked); only flows with a budget are charged.
    `full`: called when the table had no slot for a flow (the request is refused)."""

    def __init__(self, settings: FlowSettings, table: QuotaTable | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 full: Callable[[], None] = lambda: None) -> None:
        self._settings = settings
        self._table = table or QuotaTable()
        self._clock = clock
        self._full = full
        self._lock = threading.Lock()  # a check and its charge, one step in this process

    def take(self, flow: str, tokens: float) -> None:
        """Charge one request and its prompt tokens to `flow`, or raise QuotaExceeded."""
        quota = self._settings.quota(flow)
        wanted = [(kind, per_minute, need) for kind, per_minute, need in (
            ("requests", quota.requests_per_minute, 1),
            ("tokens", quota.tokens_per_minute, math.ceil(tokens))) if per_minute]
        if not wanted:
            return
        with self._lock:
            self._take(flow, wanted)

    def _take(self, flow: str, wanted: list[tuple[str, int, int]]) -> None:
        now = self._clock()
        # Two processes may both see room for the last request of a minute and both take it:
        # a check and a charge are one step in a process, not across processes (the overshoot
        # is at most one request per other process racing in the same instant).
        kind, wait = max(((kind, self._wait(_key(flow, kind), per_minute, need, now))
                          for kind, per_minute, need in wanted), key=lambda pair: pair[1])
        if wait > 0:
            raise QuotaExceeded(f"flow {flow!r} is over its {kind} per minute quota; "
                                "retry later", retry_after=max(1, math.ceil(wait)))
        charged: list[tuple[str, int]] = []
        for kind, _, need in wanted:
            if not self._table.spend(_key(flow, kind), need, now):
                for done, amount in charged:
                    self._table.refund(done, amount, now)
                self._full()
                raise QuotaExceeded(f"flow {flow!r}: the quota table has no room for more "
                                    "flows this minute; retry later", retry_after=WINDOW)
            charged.append((_key(flow, kind), need))

    def give_back(self, flow: str, tokens: float) -> None:
        """Undo `take` for a request refused before it reached an engine."""
        quota = self._settings.quota(flow)
        now = self._clock()
        if quota.requests_per_minute:
            self._table.refund(_key(flow, "requests"), 1, now)
        if quota.tokens_per_minute:
            self._table.refund(_key(flow, "tokens"), math.ceil(tokens), now)

    def generated(self, flow: str, tokens: float) -> None:
        """Charge the tokens a dispatched request generated (lost, and counted as `full`,
        when the table has no slot for the flow)."""
        if self._settings.quota(flow).tokens_per_minute and not self._table.spend(
                _key(flow, "tokens"), math.ceil(tokens), self._clock()):
            self._full()

    def _wait(self, key: str, per_minute: int, need: int, now: float) -> float:
        """Seconds until `need` (at most a whole budget) fits in `key`'s minute."""
        spent = self._table.spent(key, now)
        excess = spent.total + min(need, per_minute) - per_minute
        if excess <= 0:
            return 0.0
        for second, amount in spent.by_second:
            excess -= amount
            if excess <= 0:
                return second + WINDOW - now
        return float(WINDOW)  # unreachable: all of it leaves the window within a minute


def _key(flow: str, kind: str) -> str:
    return f"{kind}\0{flow}"
