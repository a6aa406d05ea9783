"""Prometheus metrics of the picker itself, on a registry owned by the running picker.

Per-worker in-flight and health are read from the WorkerRegistry at scrape time instead of being
pushed on every request: the hot path then only bumps two counters and one histogram.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from picker.registry import WorkerRegistry

__all__ = ["CONTENT_TYPE", "PickerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Decisions take microseconds; default Prometheus buckets start at 5 ms and would see nothing.
_DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2)


class _WorkerStateCollector(Collector):
    def __init__(self, workers: WorkerRegistry) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "llm_picker_worker_in_flight", "Requests routed to the worker and not finished",
            labels=["worker"],
        )
        healthy = GaugeMetricFamily(
            "llm_picker_worker_healthy", "1 when the worker is routable", labels=["worker"]
        )
        for worker in self._workers.workers():
            in_flight.add_metric([worker.id], worker.in_flight)
            healthy.add_metric([worker.id], 1.0 if worker.routable else 0.0)
        yield in_flight
        yield healthy


class PickerMetrics:
    def __init__(self, workers: WorkerRegistry) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llm_picker_requests", "Requests by outcome (completed, cancelled, rejected, ...)",
            ["outcome"], registry=self.registry,
        )
        self.rejections = Counter(
            "llm_picker_rejections", "Requests the picker refused, by error code",
            ["code"], registry=self.registry,
        )
        self.decisions = Counter(
            "llm_picker_decisions", "Routing decisions by policy and chosen worker",
            ["policy", "worker"], registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "llm_picker_decision_duration_seconds", "Time to choose a worker",
            buckets=_DECISION_BUCKETS, registry=self.registry,
        )
        self.config_reloads = Counter(
            "llm_picker_config_reloads", "Configuration file reloads by result (applied, rejected)",
            ["result"], registry=self.registry,
        )
        self.registry.register(_WorkerStateCollector(workers))

    def render(self) -> bytes:
        return generate_latest(self.registry)
