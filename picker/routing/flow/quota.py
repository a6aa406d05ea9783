"""Per-flow budgets: requests per minute and tokens per minute, as LiteLLM's per-key and
per-team rpm/tpm limits and Envoy AI Gateway's token QuotaPolicy express them.

Each dimension is a bucket holding at most a minute's budget and refilling continuously at
budget/60 per second (a rolling minute without window edges). A request must find one request
and its prompt tokens in the buckets, else it is refused with 429 and a Retry-After saying when
they will be there; a request larger than a whole minute's budget waits for a full bucket
rather than being refused forever. Its generated tokens are taken when the response ends and
may drive the bucket below zero: a flow that generates much waits longer before its next
request. A request refused after its charge (shed, expired, gone) gets the charge back.

Each picker process keeps its own buckets: under `serve --workers N` each holds 1/N of every
budget (picker.processes.group.share_of_flow); replicas each enforce the whole budget.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from picker.errors import QuotaExceeded
from picker.routing.flow.settings import FlowSettings

__all__ = ["QuotaBook"]

# Beyond this many buckets, full ones (flows idle for a minute) are forgotten: a full bucket
# and no bucket mean the same, and trusted client flow ids are unbounded in number.
_PRUNE_ABOVE = 10_000


class _Bucket:
    __slots__ = ("level", "per_minute", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.per_minute = per_minute
        self.level = float(per_minute)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(float(self.per_minute),
                         self.level + (now - self.stamp) * self.per_minute / 60)
        self.stamp = now

    def wait_for(self, need: float) -> float:
        """Seconds until `need` (at most a full bucket) is in the bucket."""
        return max(0.0, (min(need, self.per_minute) - self.level) * 60 / self.per_minute)

    def add(self, amount: float) -> None:
        self.level = min(float(self.per_minute), self.level + amount)


class QuotaBook:
    """Thread-safe; buckets only for flows that have a budget."""

    def __init__(self, settings: FlowSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}  # (flow, "requests"|"tokens")

    def take(self, flow: str, tokens: float) -> None:
        """Charge one request and its prompt tokens to `flow`, or raise QuotaExceeded."""
        quota = self._settings.quota(flow)
        wanted = [(kind, per_minute, need) for kind, per_minute, need in (
            ("requests", quota.requests_per_minute, 1.0),
            ("tokens", quota.tokens_per_minute, tokens)) if per_minute]
        if not wanted:
            return
        now = self._clock()
        with self._lock:
            charges = []
            for kind, per_minute, need in wanted:
                bucket = self._buckets.get((flow, kind))
                if bucket is None or bucket.per_minute != per_minute:
                    bucket = self._buckets[(flow, kind)] = _Bucket(per_minute, now)
                bucket.refill(now)
                charges.append((kind, bucket, need))
            kind, wait = max(((kind, bucket.wait_for(need)) for kind, bucket, need in charges),
                             key=lambda pair: pair[1])
            if wait > 0:
                raise QuotaExceeded(f"flow {flow!r} is over its {kind} per minute quota; "
                                    "retry later", retry_after=max(1, math.ceil(wait)))
            for _, bucket, need in charges:
                bucket.level -= min(need, bucket.per_minute)
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)

    def give_back(self, flow: str, tokens: float) -> None:
        """Undo `take` for a request refused before it reached an engine."""
        self._add(flow, "requests", 1.0)
        self._add(flow, "tokens", tokens)

    def generated(self, flow: str, tokens: float) -> None:
        """Charge the tokens a dispatched request generated."""
        self._add(flow, "tokens", -tokens)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.level >= bucket.per_minute:
                del self._buckets[key]

    def _add(self, flow: str, kind: str, amount: float) -> None:
        with self._lock:
            bucket = self._buckets.get((flow, kind))
            if bucket is not None:
                bucket.add(amount)
