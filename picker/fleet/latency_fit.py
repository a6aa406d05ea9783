"""LatencyFit: time to first token on one engine, learned online from what the picker saw.

Beside the analytic prediction (picker.fleet.speed: uncached tokens at the learned prefill rate,
behind the waiting queue), a model that learns how this engine actually answers, from the
requests it served: no assumption that queueing and prefill add up, or that the engine's batch
size costs nothing.

The anchor is llm-d-router's predicted-latency producer (its predictedlatency plugin's
training.go, buildTrainingEntry): it trains XGBoost in a sidecar on, per request, the KV cache
usage, input tokens, waiting and running requests and prefix-cache score captured at
scheduling, labelled with the observed TTFT. Here the same signals, with the prompt's input
tokens and prefix score folded into the tokens the engine must prefill (the prompt it is not
believed to hold), plus the prefill work the picker itself has just sent there, fit one linear
model per engine by recursive least squares with forgetting: about 40 multiply-adds per finished
request, a 6-term dot product per prediction, no dependency, and an engine that slows down is
followed within a few hundred requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from picker.fleet.engine_load import EngineLoad

__all__ = ["FEATURES", "LatencyFit", "features"]

# Bias, thousands of uncached prompt tokens, waiting and running requests, KV usage (0..1),
# thousands of prefill tokens the picker sent there that are not done.
FEATURES = ("bias", "uncached_ktokens", "waiting", "running", "kv_usage", "ahead_ktokens")
_N = len(FEATURES)
# Weight kept by the past at each update: an effective memory of ~200 requests.
_FORGET = 0.995
# Initial covariance: large, so the first observations set the weights.
_P0 = 100.0
# Predictions start after this many observations on the engine.
MIN_SAMPLES = 16


def features(uncached_tokens: float, engine: EngineLoad | None, ahead_tokens: float,
             fresh: bool) -> tuple[float, ...]:
    """The model's input for a request on an engine: the engine's own signals count only when
    `fresh` (a stale scrape says nothing about now)."""
    waiting = running = kv = 0.0
    if engine is not None and fresh:
        waiting = engine.waiting or 0.0
        running = engine.running or 0.0
        kv = engine.kv_usage or 0.0
    return (1.0, uncached_tokens / 1000.0, waiting, running, kv, ahead_tokens / 1000.0)


@dataclass(frozen=True, slots=True)
class LatencyFit:
    """An immutable value, replaced on each observation (picker.fleet.registry writes it), so
    predictions on the hot path read it without a lock."""

    weights: tuple[float, ...] = (0.0,) * _N
    covariance: tuple[float, ...] = tuple(_P0 if i == j else 0.0
                                          for i in range(_N) for j in range(_N))
    samples: int = 0

    def predict(self, x: tuple[float, ...]) -> float | None:
        """Predicted seconds to the first token; None until MIN_SAMPLES were learned."""
        if self.samples < MIN_SAMPLES:
            return None
        return max(0.0, sum(w * v for w, v in zip(self.weights, x, strict=True)))

    def learned(self, x: tuple[float, ...], ttft_secs: float) -> LatencyFit:
        """This fit updated with one observed first token (recursive least squares)."""
        p = self.covariance
        px = [sum(p[i * _N + j] * x[j] for j in range(_N)) for i in range(_N)]
        denominator = _FORGET + sum(x[i] * px[i] for i in range(_N))
        gain = [v / denominator for v in px]
        error = ttft_secs - sum(w * v for w, v in zip(self.weights, x, strict=True))
        weights = tuple(w + g * error for w, g in zip(self.weights, gain, strict=True))
        covariance = tuple((p[i * _N + j] - gain[i] * px[j]) / _FORGET
                           for i in range(_N) for j in range(_N))
        return LatencyFit(weights, covariance, self.samples + 1)
