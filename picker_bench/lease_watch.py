"""`llm-picker bench lease-watch`: what the prediction audit and trace recording add to a
request's lease, in process.

Every request's lease is opened and closed once; the audit (always on) and a recording (with
`trace:`) are watchers of the lease book that run at both points. This times a lease's open
and close with a response sample, with no watcher, with the audit, and with the audit and a
recording of every request (to a file in a temporary directory), in one run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.routing.admission import LimitSettings
from picker.routing.leases import LeaseBook, LeaseWatcher
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.response_stats import ResponseSample, Usage
from picker.routing.router import Choice
from picker.trace.audit import PredictionAudit
from picker.trace.latency_learner import LatencyLearner
from picker.trace.recorder import TraceRecorder
from picker.trace.settings import TraceSettings

__all__ = ["run_lease_watch"]

_PROMPT = "You are a careful assistant. Answer briefly and cite the house rules. " * 110


Watchers = Callable[[WorkerRegistry], Sequence[LeaseWatcher]]


def _per_lease_us(watchers: Watchers, requests: int) -> float:
    registry = WorkerRegistry()
    worker = registry.add(WorkerSpec(url="http://10.0.0.1:8000", id="w1"))
    book = LeaseBook(registry, LimitSettings(), PickerMetrics(registry), watchers(registry))
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text=_PROMPT,
                             body={"max_tokens": 16})
    sample = ResponseSample(0.02, 0.005, 16, Usage(2000, 16, 1500))
    choice = Choice(worker, "prefix_cache", 0.75, None, 500.0)
    started = time.perf_counter()
    for _ in range(requests):
        book.admit_now()
        book.open(choice, request=request).release(Outcome.COMPLETED, sample)
    return (time.perf_counter() - started) / requests * 1e6


def run_lease_watch(requests: int = 20_000) -> int:
    with tempfile.TemporaryDirectory() as root:
        recorder = TraceRecorder(TraceSettings(path=Path(root) / "trace.jsonl"))
        scenarios: list[tuple[str, Watchers]] = [
            ("no watcher", lambda _: ()),
            ("audit", lambda _: (PredictionAudit(CollectorRegistry()),)),
            ("audit + learn", lambda workers: (PredictionAudit(CollectorRegistry()),
                                               LatencyLearner(workers))),
            ("audit + trace", lambda _: (PredictionAudit(CollectorRegistry()), recorder)),
        ]
        base = None
        print(f"{'scenario':<14} {'us per lease':>12} {'vs none':>8}  ({requests} leases, "
              f"a {len(_PROMPT)}-character prompt)")
        for name, watchers in scenarios:
            cost = _per_lease_us(watchers, requests)
            base = base or cost
            print(f"{name:<14} {cost:>12.1f} {cost / base:>7.2f}x")
        recorder.close()
    return 0
