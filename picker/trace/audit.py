"""PredictionAudit: does what the picker predicts happen? Checked on every response it sees.

At each decision the picker predicts how much of the prompt the chosen engine holds (the
prefix match) and how soon the first token comes (picker.speed.predicted_ttft). The engine
says afterwards: `usage.prompt_tokens_details.cached_tokens` (vLLM, SGLang, OpenAI), and the
proxy observes the TTFT. The errors go to histograms by worker, and to the decision's record.

Drift: an index or a tokenization that is systematically wrong - a chat template rendered
differently from the engine's makes every predicted hit miss - shows as a worker whose
predicted hits keep not happening. Over its last `window` responses that report cached
tokens and had a predicted hit, if the engine served less than a fifth of what was predicted,
the worker is drifting: a gauge says 1 and a warning is logged once, until it recovers (half
of the predicted). A worker whose responses carry no cached-token count says nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from picker.routing.leases import Lease, LeaseEnd
from picker.routing.predicted import Predicted
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice

__all__ = ["Audited", "PredictionAudit"]

log = logging.getLogger("llm_picker")

_HIT_BUCKETS = (-1.0, -0.5, -0.25, -0.1, -0.02, 0.02, 0.1, 0.25, 0.5, 1.0)
_TTFT_BUCKETS = (-5.0, -1.0, -0.25, -0.05, -0.01, 0.01, 0.05, 0.25, 1.0, 5.0)
_DRIFT_BELOW = 0.2  # served under this share of the predicted hits: drifting
_RECOVER_AT = 0.5  # served at least this share again: recovered


@dataclass(frozen=True, slots=True)
class Audited:
    """One request's predictions next to what was observed (None: not known)."""

    predicted_hit: float | None
    observed_hit: float | None
    predicted_ttft_secs: float | None
    observed_ttft_secs: float | None
    learned_ttft_secs: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 4) for k, v in (
            ("predicted_hit", self.predicted_hit), ("observed_hit", self.observed_hit),
            ("predicted_ttft_secs", self.predicted_ttft_secs),
            ("learned_ttft_secs", self.learned_ttft_secs),
            ("observed_ttft_secs", self.observed_ttft_secs))}


class _Window:
    """A worker's recent (predicted, observed) hits and errors."""

    def __init__(self, size: int) -> None:
        self.hits: deque[tuple[float, float]] = deque(maxlen=size)
        self.hit_errors: deque[float] = deque(maxlen=size)
        self.ttft_errors: deque[float] = deque(maxlen=size)
        self.learned_errors: deque[float] = deque(maxlen=size)
        self.drifting = False


class PredictionAudit:
    needs_answer = True  # a prediction is checked against the answer only

    def __init__(self, registry: CollectorRegistry, window: int = 50,
                 min_samples: int = 20) -> None:
        self._min = min_samples
        self._size = window
        self._lock = threading.Lock()
        self._workers: dict[str, _Window] = {}
        self.hit_error = Histogram(
            "llm_picker_audit_hit_error",
            "Predicted minus engine-reported share of the prompt served from the prefix cache "
            "(usage.prompt_tokens_details.cached_tokens), per response that reports it",
            ["worker"], buckets=_HIT_BUCKETS, registry=registry)
        self.ttft_error = Histogram(
            "llm_picker_audit_ttft_error_seconds",
            "Observed minus predicted time to first token, per streamed response",
            ["worker"], buckets=_TTFT_BUCKETS, registry=registry)
        self.learned_ttft_error = Histogram(
            "llm_picker_audit_learned_ttft_error_seconds",
            "Observed minus learned (picker.fleet.latency_fit) time to first token, per streamed "
            "response once the worker's model has its first samples",
            ["worker"], buckets=_TTFT_BUCKETS, registry=registry)
        self.drift = Gauge(
            "llm_picker_audit_drift",
            "1 while the prefix hits predicted for the worker keep not happening (the prefix "
            "index or the tokenization does not match the engine's)",
            ["worker"], registry=registry, multiprocess_mode="max")

    def opened(self, choice: Choice, request: RoutingRequest,
               predicted: Predicted) -> LeaseEnd:

        def ended(lease: Lease, outcome: str, response: ResponseSample | None) -> None:
            if response is not None:
                self._check(choice, predicted, lease.worker.id, response)

        return ended

    def view(self) -> dict[str, dict[str, Any]]:
        """Per worker: mean errors over the window and whether it drifts (the status page)."""
        with self._lock:
            return {worker: {
                "samples": len(w.hit_errors),
                "hit_error": _mean(w.hit_errors),
                "ttft_error_secs": _mean(w.ttft_errors),
                "learned_ttft_error_secs": _mean(w.learned_errors),
                "drift": w.drifting,
            } for worker, w in sorted(self._workers.items())}

    def _check(self, choice: Choice, predicted: Predicted, worker: str,
               response: ResponseSample) -> None:
        usage = response.usage
        observed_hit = None
        if usage is not None and usage.cached_tokens is not None and usage.prompt_tokens:
            observed_hit = min(1.0, usage.cached_tokens / usage.prompt_tokens)
        ttft = response.ttft_secs
        with self._lock:
            window = self._workers.get(worker)
            if window is None:
                window = self._workers[worker] = _Window(self._size)
            if observed_hit is not None and predicted.hit is not None:
                error = predicted.hit - observed_hit
                window.hit_errors.append(error)
                self.hit_error.labels(worker).observe(error)
                if predicted.hit > 0:
                    window.hits.append((predicted.hit, observed_hit))
                    self._judge(worker, window)
            if ttft is not None and predicted.ttft_secs is not None:
                window.ttft_errors.append(ttft - predicted.ttft_secs)
                self.ttft_error.labels(worker).observe(ttft - predicted.ttft_secs)
            if ttft is not None and predicted.learned_ttft_secs is not None:
                window.learned_errors.append(ttft - predicted.learned_ttft_secs)
                self.learned_ttft_error.labels(worker).observe(
                    ttft - predicted.learned_ttft_secs)
        if choice.decision is not None:
            choice.decision.audited(Audited(predicted.hit, observed_hit, predicted.ttft_secs,
                                            ttft, predicted.learned_ttft_secs).to_dict())

    def _judge(self, worker: str, window: _Window) -> None:
        if len(window.hits) < self._min:
            return
        expected = sum(p for p, _ in window.hits)
        served = sum(o for _, o in window.hits) / expected
        if not window.drifting and served < _DRIFT_BELOW:
            window.drifting = True
            self.drift.labels(worker).set(1)
            log.warning(
                "prediction drift on worker %s: over its last %d requests with a predicted "
                "prefix hit, the engine reported %.0f%% of the predicted cached tokens; the "
                "prefix index or the tokenization (chat template, tokenizer) does not match the "
                "engine's", worker, len(window.hits), served * 100)
        elif window.drifting and served >= _RECOVER_AT:
            window.drifting = False
            self.drift.labels(worker).set(0)
            log.warning("prediction drift on worker %s is over (%.0f%% of predicted hits "
                        "served)", worker, served * 100)


def _mean(values: deque[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
