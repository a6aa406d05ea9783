"""Prometheus metrics of the picker itself, on a registry owned by the running picker.

Per-worker in-flight and health are read from the WorkerRegistry at scrape time instead of being
pushed on every request: the hot path then only bumps two counters and one histogram.

In a multi-process picker every process keeps its counters in prometheus_client's multiprocess
files (the supervisor sets PROMETHEUS_MULTIPROC_DIR before any import), and the primary's
/metrics sums them all; the worker state it adds is the primary's view of the fleet, whose
in-flight counts are the shared ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from picker.fleet.circuit import CircuitState
from picker.fleet.registry import Worker, WorkerRegistry
from picker.prefix.calibration import Calibration
from picker.prefix.index import PrefixIndex
from picker.routing.admission import Admission
from picker.routing.outcome import Outcome
from picker.routing.response_stats import ResponseSample

__all__ = ["CONTENT_TYPE", "IMBALANCE_ABS_COUNT", "PickerMetrics", "ReplicaMetrics",
           "match_bucket"]

IMBALANCE_ABS_COUNT = 16

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Decisions take microseconds; default Prometheus buckets start at 5 ms and would see nothing.
_DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2)
# Observed time to first token: from a few ms (cache hit, idle engine) to queueing for seconds.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Gap between streamed chunks (one token each): decode steps of a few to a few hundred ms.
_CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


def match_bucket(rate: float | None) -> str:
    """Prefix match of the chosen worker as a coarse label: 0, 1-25, 26-50, 51-75, 76-99, 100."""
    if rate is None:
        return "none"
    percent = round(rate * 100)
    if percent <= 0:
        return "0"
    if percent >= 100:
        return "100"
    for upper, label in ((25, "1-25"), (50, "26-50"), (75, "51-75")):
        if percent <= upper:
            return label
    return "76-99"


class _WorkerStateCollector(Collector):
    def __init__(self, workers: WorkerRegistry) -> None:
        self._workers = workers
        self.prefix_index: PrefixIndex | None = None
        self.calibration: Calibration | None = None
        self.admission: Admission | None = None
        self.outcomes: Mapping[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "llm_picker_worker_in_flight", "Requests routed to the worker and not finished",
            labels=["worker"],
        )
        healthy = GaugeMetricFamily(
            "llm_picker_worker_healthy", "1 when the worker is routable", labels=["worker"]
        )
        circuit = GaugeMetricFamily(
            "llm_picker_worker_circuit_state", "1 for the circuit breaker's current state",
            labels=["worker", "state"],
        )
        blocks = GaugeMetricFamily(
            "llm_picker_prefix_index_blocks", "Prompt blocks the prefix index holds per worker",
            labels=["worker"],
        )
        for worker in self._workers.workers():
            in_flight.add_metric([worker.id], worker.in_flight)
            healthy.add_metric([worker.id], 1.0 if worker.routable else 0.0)
            for state in CircuitState:
                circuit.add_metric([worker.id, state.value],
                                   1.0 if worker.circuit.state is state else 0.0)
            if self.prefix_index is not None:
                blocks.add_metric([worker.id], self.prefix_index.blocks_of(worker.id))
        yield in_flight
        yield healthy
        yield circuit
        yield from _speeds(self._workers.workers())
        if self.calibration is not None:
            yield from _calibration(self.calibration)
        if self.admission is not None:
            active = self.admission.active
            limit = self.admission.limit
            yield GaugeMetricFamily("llm_picker_active_requests",
                                    "Requests admitted and not finished", value=active)
            yield GaugeMetricFamily("llm_picker_queued_requests",
                                    "Requests waiting for admission", value=self.admission.waiting)
            yield GaugeMetricFamily("llm_picker_utilization",
                                    "active / max_concurrent_requests (0 when unlimited)",
                                    value=active / limit if limit else 0.0)
            finished = sum(self.outcomes.values())
            yield GaugeMetricFamily(
                "llm_picker_success_ratio",
                "completed / finished requests since start (1 before any finished)",
                value=self.outcomes.get(Outcome.COMPLETED, 0) / finished if finished else 1.0)
        if self.prefix_index is not None:
            yield blocks
            status = GaugeMetricFamily(
                "llm_picker_prefix_indexer_status", "1 when a prefix index serves the model",
                labels=["model", "kind"],
            )
            for model in sorted(self._workers.models()):
                status.add_metric([model, self.prefix_index.kind], 1.0)
            yield status


def _speeds(workers: Iterable[Worker]) -> Iterator[Metric]:
    """What the picker learned of each engine's speed (picker.fleet.speed); unknown: no sample."""
    prefill = GaugeMetricFamily(
        "llm_picker_worker_prefill_tokens_per_second",
        "Learned prefill rate of the worker's engine (uncached prompt tokens per second)",
        labels=["worker"])
    decode = GaugeMetricFamily(
        "llm_picker_worker_decode_step_seconds",
        "Learned decode step of the worker's engine (seconds per output token)",
        labels=["worker"])
    for worker in workers:
        speed = worker.speed
        if speed.prefill_tokens_per_sec is not None:
            prefill.add_metric([worker.id], speed.prefill_tokens_per_sec)
        if speed.decode_step_secs is not None:
            decode.add_metric([worker.id], speed.decode_step_secs)
    yield prefill
    yield decode


def _calibration(calibration: Calibration) -> Iterator[Metric]:
    """The approximate index's sizing per worker (picker/prefix/calibration.py)."""
    families = {
        "units_per_token": GaugeMetricFamily(
            "llm_picker_prefix_units_per_token",
            "Measured prompt units (characters, or 1 for tokens) per engine token",
            labels=["worker"]),
        "capacity_blocks": GaugeMetricFamily(
            "llm_picker_prefix_index_capacity_blocks",
            "Blocks the approximate index keeps for the worker, sized from its engine",
            labels=["worker"]),
        "hit_ratio": GaugeMetricFamily(
            "llm_picker_prefix_hit_prediction_ratio",
            "Engine-reported prefix-cache hits over the hits the index predicted (1 = exact)",
            labels=["worker"]),
        "correction": GaugeMetricFamily(
            "llm_picker_prefix_capacity_correction",
            "Factor applied to the engine-sized capacity after comparing hits", labels=["worker"]),
    }
    for worker_id, state in calibration.snapshot().items():
        for field, family in families.items():
            value = getattr(state, field)
            if value is not None:
                family.add_metric([worker_id], float(value))
    yield from families.values()


class ReplicaMetrics:
    """Picks shared among picker replicas (picker/replicas): a drop costs affinity only, so
    drops are counted by reason to tell overload, slow and absent peers apart."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter("llm_picker_replica_picks_sent", "Picks sent to a peer replica",
                            ["peer"], registry=registry)
        self.received = Counter("llm_picker_replica_picks_received",
                                "Picks received from peer replicas", registry=registry)
        self.dropped = Counter(
            "llm_picker_replica_picks_dropped", "Picks not shared or not applied: overload "
            "(send queue full), peer_slow, peer_down, unknown_worker, invalid",
            ["reason"], registry=registry)
        self.refused = Counter("llm_picker_replica_links_refused",
                               "Inbound replica links closed for not proving replicas.secret",
                               registry=registry)
        self.peers_connected = Gauge("llm_picker_replica_peers_connected",
                                     "Peer replicas this one is sending its picks to",
                                     registry=registry, multiprocess_mode="livesum")


_Labelled = TypeVar("_Labelled", Counter, Histogram)


class _Children(Generic[_Labelled]):
    """A labelled metric's children by label values. prometheus_client's `labels()` checks
    and converts the values and takes the metric's lock on every call (1.06 us with the
    increment, 0.44 us this way); per request, the few label combinations the hot path uses
    are found again with one dict lookup. Children are never removed, so none goes stale.
    The increments themselves keep prometheus_client's lock: it has no lock-free value."""

    __slots__ = ("_metric", "_known")

    def __init__(self, metric: _Labelled) -> None:
        self._metric: _Labelled = metric
        self._known: dict[tuple[str, ...], _Labelled] = {}

    def __call__(self, *values: str) -> _Labelled:
        child = self._known.get(values)
        if child is None:  # two threads may both get here: labels() returns the same child
            child = self._known[values] = self._metric.labels(*values)
        return child


class PickerMetrics:
    def __init__(self, workers: WorkerRegistry, processes_dir: Path | None = None) -> None:
        """`processes_dir`: the multiprocess files of every process of this picker, which
        `render` sums (PROMETHEUS_MULTIPROC_DIR, set before prometheus_client is imported)."""
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
        self.routing_decisions = Counter(
            "llm_picker_routing_decisions",
            "Decisions by model, policy and prefix match of the chosen worker (percent bucket)",
            ["model", "policy", "match_percent_bucket"], registry=self.registry,
        )
        self.prefix_hits = Counter(
            "llm_picker_prefix_hits",
            "Decisions whose chosen worker held part of the prompt (prefix index enabled); "
            "divided by llm_picker_decisions it is the worker's prefix hit rate",
            ["worker"], registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "llm_picker_decision_duration_seconds", "Time to choose a worker",
            buckets=_DECISION_BUCKETS, registry=self.registry,
        )
        self.load_imbalance = Counter(
            "llm_picker_load_imbalance",
            "Decisions taken while candidates' in-flight counts differed by more than "
            f"{IMBALANCE_ABS_COUNT} (AIBrix's default imbalance threshold)",
            registry=self.registry,
        )
        # GIE's inference_extension_model_rewrite_decisions_total under this project's prefix
        # (pkg/epp/metrics/metrics.go:389-396 at c9332cb); only rules' draws, whose labels the
        # configuration bounds (a header's target is client text).
        self.model_rewrites = Counter(
            "llm_picker_model_rewrite_decisions",
            "Requests a model_rewrites rule sent on, by rule, requested model and target model",
            ["rule", "model", "target"], registry=self.registry,
        )
        self.spillovers = Counter(
            "llm_picker_spillovers",
            "Requests sent to an overflow worker because every regular worker serving the "
            "model was at limits.per_worker_max", ["model", "worker"], registry=self.registry,
        )
        self.tokenizer_fallbacks = Counter(
            "llm_picker_tokenizer_fallbacks", "Requests whose remote tokenization failed and "
            "fell back to character blocks", registry=self.registry,
        )
        self.prefill_failures = Counter(
            "llm_picker_pd_prefill_failures", "Prefill requests the picker sent for a "
            "prefill/decode pair that failed, by prefill worker", ["worker"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "llm_picker_config_reloads", "Configuration file reloads by result (applied, rejected)",
            ["result"], registry=self.registry,
        )
        for result in ("applied", "rejected"):  # at 0 from the start: rate() needs a before
            self.config_reloads.labels(result)
        self.worker_ttft_seconds = Histogram(
            "llm_picker_worker_ttft_seconds",
            "Observed time from the pick to the first chunk of a streamed response",
            ["worker"], buckets=_TTFT_BUCKETS, registry=self.registry,
        )
        self.worker_chunk_seconds = Histogram(
            "llm_picker_worker_time_per_chunk_seconds",
            "Observed mean gap between a streamed response's chunks (one token per SSE event)",
            ["worker"], buckets=_CHUNK_BUCKETS, registry=self.registry,
        )
        self.worker_tokens = Counter(
            "llm_picker_worker_tokens",
            "Tokens in the usage of responses seen passing through, by kind (prompt, "
            "completion, cached: prompt tokens the engine served from its prefix cache)",
            ["worker", "kind"], registry=self.registry,
        )
        self._requests = _Children(self.requests)
        self._decisions = _Children(self.decisions)
        self._routing_decisions = _Children(self.routing_decisions)
        self._prefix_hits = _Children(self.prefix_hits)
        self._ttft = _Children(self.worker_ttft_seconds)
        self._per_chunk = _Children(self.worker_chunk_seconds)
        self._tokens = _Children(self.worker_tokens)
        self._state = _WorkerStateCollector(workers)
        self.registry.register(self._state)
        self._exposed = self.registry
        if processes_dir is not None:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, str(processes_dir))  # type: ignore[no-untyped-call]
            self._exposed.register(self._state)

    def watch_prefix_index(self, index: PrefixIndex,
                           calibration: Calibration | None = None) -> None:
        self._state.prefix_index = index
        self._state.calibration = calibration

    def watch_admission(self, admission: Admission, outcomes: Mapping[str, int]) -> None:
        self._state.admission = admission
        self._state.outcomes = outcomes

    def rewrite_decided(self, rule: str, model: str, target: str) -> None:
        """A model_rewrites rule sent a request for `model` on as `target`."""
        self.model_rewrites.labels(rule, model, target).inc()

    def spilled(self, model: str, worker_id: str) -> None:
        """A request of `model` went to overflow worker `worker_id` (spill-over)."""
        self.spillovers.labels(model, worker_id).inc()

    def request_ended(self, outcome: str) -> None:
        self._requests(outcome).inc()

    def decided(self, policy: str, worker_id: str, model: str, match_rate: float | None,
                seconds: float) -> None:
        """One routing decision's counters and duration (the router's hot path)."""
        self.decision_seconds.observe(seconds)
        self._decisions(policy, worker_id).inc()
        self._routing_decisions(model, policy, match_bucket(match_rate)).inc()
        if match_rate:
            self._prefix_hits(worker_id).inc()

    def observe_response(self, worker_id: str, sample: ResponseSample) -> None:
        if sample.ttft_secs is not None:
            self._ttft(worker_id).observe(sample.ttft_secs)
        if sample.per_chunk_secs is not None:
            self._per_chunk(worker_id).observe(sample.per_chunk_secs)
        usage = sample.usage
        if usage is not None:
            for kind, count in (("prompt", usage.prompt_tokens),
                                ("completion", usage.completion_tokens),
                                ("cached", usage.cached_tokens or 0)):
                self._tokens(worker_id, kind).inc(count)

    def render(self) -> bytes:
        return generate_latest(self._exposed)

    def by_worker(self, counter: str) -> dict[str, float]:
        """A per-worker counter's totals as /metrics shows them (every process's, in a
        multi-process picker), e.g. `by_worker("llm_picker_decisions")`."""
        totals: dict[str, float] = {}
        for family in self._exposed.collect():
            if family.name != counter:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    worker = sample.labels["worker"]
                    totals[worker] = totals.get(worker, 0.0) + sample.value
        return totals
