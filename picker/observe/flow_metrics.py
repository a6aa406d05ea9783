"""Flow control's metrics, per band (priority) and flow: how many wait, how long requests
waited, and how each left flow control (dispatched, queue_full, shed, ttl_expired,
no_ready_worker, cancelled), how many dispatched ones were preempted later (flow.preempt:
outcome `preempted`, counted besides their dispatch, not a wait), and when the quota table was
full.

Flow ids are label values: with `flow.trust_client_headers` they are client text, bounded in
length by picker.routing.flow.key. Their number is bounded here: the first MAX_FLOW_LABELS ids
seen keep their own series, later ones are counted under OTHER_FLOWS, so a client sending a new
id per request cannot grow /metrics (and Prometheus) without end.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from picker.routing.flow import FlowKey, FlowObserver, FlowOutcome

__all__ = ["MAX_FLOW_LABELS", "OTHER_FLOWS", "FlowMetrics"]

MAX_FLOW_LABELS = 1000
# Not a flow id a request can carry: those are header values, and this has a space.
OTHER_FLOWS = "(other flows)"

# From dispatched at once to a long TTL.
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0)


class FlowMetrics(FlowObserver):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._queued = Gauge(
            "llm_picker_flow_queued", "Requests waiting in flow control, by band and flow",
            ["priority", "flow"], registry=registry, multiprocess_mode="livesum")
        self._requests = Counter(
            "llm_picker_flow_requests",
            "Requests leaving flow control, by band, flow and outcome",
            ["priority", "flow", "outcome"], registry=registry)
        self._waited = Histogram(
            "llm_picker_flow_wait_seconds",
            "Time requests waited in flow control before leaving it, by band and outcome",
            ["priority", "outcome"], buckets=_WAIT_BUCKETS, registry=registry)
        self._table_full = Counter(
            "llm_picker_flow_quota_table_full",
            "Times a flow with a budget found no slot in the quota table (request refused, "
            "or generated tokens not charged)", registry=registry)
        self._labelled: set[str] = set()  # only grows, so an id keeps its label

    def _flow(self, fairness_id: str) -> str:
        if fairness_id in self._labelled:
            return fairness_id
        if len(self._labelled) >= MAX_FLOW_LABELS:
            return OTHER_FLOWS
        self._labelled.add(fairness_id)
        return fairness_id

    def queued(self, key: FlowKey, change: int) -> None:
        self._queued.labels(str(key.priority), self._flow(key.fairness_id)).inc(change)

    def left(self, key: FlowKey, outcome: FlowOutcome, waited_secs: float) -> None:
        priority = str(key.priority)
        self._requests.labels(priority, self._flow(key.fairness_id), outcome.value).inc()
        if outcome is not FlowOutcome.PREEMPTED:
            self._waited.labels(priority, outcome.value).observe(waited_secs)

    def quota_table_full(self) -> None:
        self._table_full.inc()
