"""Scorers: per-candidate scores in [0, 1] (higher is better) that the weighted policy combines.

A scorer knows nothing of its weight, and may answer None for a candidate it knows nothing
about (no fresh engine metrics, no prefix index): the combining policy treats that as neutral.
One table names them all; adding a signal is one function and one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from picker.registry import Worker
from picker.request import RoutingRequest

__all__ = ["SCORERS", "Scorer", "fresh_engine_value"]

Scorer = Callable[[RoutingRequest, Sequence[Worker], float, float], list[float | None]]


def fresh_engine_value(worker: Worker, field: str, now: float, stale_after: float) -> float | None:
    """An engine-reported value, or None when never scraped, not exported, or stale."""
    engine = worker.engine
    if engine is None or not engine.fresh(now, stale_after):
        return None
    value: float | None = getattr(engine, field)
    return value


def _lower_is_better(values: list[float | None]) -> list[float | None]:
    known = [v for v in values if v is not None]
    top = max(known, default=0.0)
    return [None if v is None else (1.0 if top <= 0 else 1.0 - v / top) for v in values]


def _engine(field: str) -> Scorer:
    def score(_: RoutingRequest, candidates: Sequence[Worker], now: float,
              stale_after: float) -> list[float | None]:
        return _lower_is_better([fresh_engine_value(w, field, now, stale_after)
                                 for w in candidates])
    return score


def _kv(_: RoutingRequest, candidates: Sequence[Worker], now: float,
        stale_after: float) -> list[float | None]:
    values = [fresh_engine_value(w, "kv_usage", now, stale_after) for w in candidates]
    return [None if v is None else 1.0 - v for v in values]


def _in_flight(_: RoutingRequest, candidates: Sequence[Worker], now: float,
               stale_after: float) -> list[float | None]:
    return _lower_is_better([float(w.in_flight) for w in candidates])


def _prefix(request: RoutingRequest, candidates: Sequence[Worker], now: float,
            stale_after: float) -> list[float | None]:
    match = request.prefix
    return [None if match is None else match.rate(w.id) for w in candidates]


SCORERS: Mapping[str, Scorer] = {
    "queue": _engine("waiting"),
    "running": _engine("running"),
    "kv": _kv,
    "in_flight": _in_flight,
    "prefix": _prefix,
}
