"""The prediction audit: errors per worker, drift raised and cleared, silence without counts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from picker.fleet.registry import WorkerRegistry
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.routing.admission import LimitSettings
from picker.routing.leases import LeaseBook
from picker.routing.outcome import Outcome
from picker.routing.predicted import Predicted
from picker.routing.request import Api, RoutingRequest
from picker.routing.response_stats import ResponseSample, Usage
from picker.routing.router import Choice
from picker.trace.audit import PredictionAudit


class _Fleet:
    def __init__(self) -> None:
        self.registry = WorkerRegistry()
        self.worker = self.registry.add(WorkerSpec(url="http://10.0.0.1:8000", id="w1"))
        self.metrics = CollectorRegistry()
        self.audit = PredictionAudit(self.metrics, window=20, min_samples=10)
        self.book = LeaseBook(self.registry, LimitSettings(), PickerMetrics(self.registry),
                              (self.audit,))

    def serve(self, predicted: float, cached: int | None, ttft: float | None = None) -> None:
        self.book.admit_now()
        lease = self.book.open(Choice(self.worker, "prefix_cache", predicted, None, 10.0),
                               request=RoutingRequest(model="m", api=Api.CHAT))
        lease.release("completed", ResponseSample(ttft, None, 1, Usage(100, 1, cached)))

    def drift(self) -> float | None:
        return self.metrics.get_sample_value("llm_picker_audit_drift", {"worker": "w1"})


def test_predicted_hits_the_engine_never_reports_raise_drift_and_its_end(
        caplog: pytest.LogCaptureFixture) -> None:
    fleet = _Fleet()
    for _ in range(9):
        fleet.serve(0.9, 0)
    assert fleet.drift() is None  # too few to judge
    fleet.serve(0.9, 0)
    assert fleet.drift() == 1 and fleet.audit.view()["w1"]["drift"] is True
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("prediction drift on worker w1")
    assert fleet.audit.view()["w1"]["hit_error"] == pytest.approx(0.9)
    for _ in range(20):
        fleet.serve(0.9, 85)
    assert fleet.drift() == 0 and fleet.audit.view()["w1"]["drift"] is False
    assert "is over" in caplog.records[-1].getMessage()


def test_no_cached_count_is_no_evidence_and_accurate_predictions_no_drift() -> None:
    fleet = _Fleet()
    for _ in range(30):
        fleet.serve(0.9, None)  # the engine does not report cached tokens
        fleet.serve(0.5, 50)
    view = fleet.audit.view()["w1"]
    assert fleet.drift() is None and view["samples"] == 20 and view["hit_error"] == 0.0


def test_ttft_error_is_observed_minus_predicted() -> None:
    fleet = _Fleet()
    # One observed prefill of 1000 tokens in 1 s teaches the worker 1000 tokens/s.
    fleet.registry.observe(fleet.worker, Observation(prompt_tokens=1000, cached_tokens=0,
                                                     ttft_secs=1.0))
    fleet.serve(0.0, 0, ttft=0.5)  # 10 uncached tokens at 1000/s: predicted 10 ms
    assert fleet.audit.view()["w1"]["ttft_error_secs"] == pytest.approx(0.49, abs=1e-3)
    assert fleet.metrics.get_sample_value("llm_picker_audit_ttft_error_seconds_count",
                                          {"worker": "w1"}) == 1



def test_an_answer_litellm_reported_is_audited_like_one_seen_passing() -> None:
    """LiteLLM reports the answer (its success callback) instead of passing it by: the audit
    must check the decision against it all the same."""
    fleet = _Fleet()
    fleet.book.admit_now()
    lease = fleet.book.open(Choice(fleet.worker, "prefix_cache", 0.9, None, 10.0),
                            request=RoutingRequest(model="m", api=Api.CHAT))
    lease.observe(Observation(prompt_tokens=100, cached_tokens=0, output_tokens=5,
                              ttft_secs=0.2, decode_secs=0.04))
    lease.release(Outcome.COMPLETED)
    assert fleet.audit.view()["w1"]["samples"] == 1
    assert fleet.audit.view()["w1"]["hit_error"] == pytest.approx(0.9)


def test_an_answer_the_adapter_will_not_see_takes_no_prediction() -> None:
    """Behind an ext_proc filter that sends no response body nothing can check a prediction:
    a watcher that needs the answer (the audit, the latency learner) is not shown the request;
    one of every request (the trace) still is."""
    fleet = _Fleet()
    shown: list[str] = []

    class _Spy:
        def __init__(self, name: str, needs_answer: bool) -> None:
            self.name, self.needs_answer = name, needs_answer

        def opened(self, choice: Choice, request: RoutingRequest,
                   predicted: Predicted) -> None:
            shown.append(self.name)

    book = LeaseBook(fleet.registry, LimitSettings(), PickerMetrics(fleet.registry),
                     (_Spy("audit", True), _Spy("trace", False)))
    for seen in (False, True):
        book.admit_now()
        book.open(Choice(fleet.worker, "prefix_cache", 0.9, None, 10.0), request=RoutingRequest(
            model="m", api=Api.CHAT, answer_seen=seen)).release(Outcome.COMPLETED)
    assert shown == ["trace", "audit", "trace"]
