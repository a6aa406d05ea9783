"""Flow metrics' label values are client text under flow.trust_client_headers: their number is
bounded, so a client sending a new fairness id per request cannot grow /metrics without end."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from picker.observe.flow_metrics import MAX_FLOW_LABELS, OTHER_FLOWS, FlowMetrics
from picker.routing.flow import FlowKey, FlowOutcome


def test_flows_past_the_bound_share_one_series_and_earlier_ones_keep_theirs() -> None:
    registry = CollectorRegistry()
    metrics = FlowMetrics(registry)
    for i in range(MAX_FLOW_LABELS + 500):
        key = FlowKey(0, f"tenant-{i}")
        metrics.queued(key, 1)
        metrics.queued(key, -1)
        metrics.left(key, FlowOutcome.DISPATCHED, 0.0)
    metrics.left(FlowKey(0, "tenant-0"), FlowOutcome.DISPATCHED, 0.0)
    flows = {sample.labels["flow"]: sample.value
             for family in registry.collect() if family.name == "llm_picker_flow_requests"
             for sample in family.samples if sample.name.endswith("_total")}
    assert len(flows) == MAX_FLOW_LABELS + 1
    assert flows[OTHER_FLOWS] == 500 and flows["tenant-0"] == 2
    queued = {sample.labels["flow"] for family in registry.collect()
              if family.name == "llm_picker_flow_queued" for sample in family.samples}
    assert len(queued) == MAX_FLOW_LABELS + 1
