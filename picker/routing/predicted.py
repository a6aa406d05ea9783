"""What the picker predicted for a request at its decision, taken once per lease at its opening.

The lease book (picker.routing.leases) shows it to every watcher: the trace recording, the
prediction audit and the latency learner."""

from __future__ import annotations

from dataclasses import dataclass

from picker.fleet.speed import predicted_ttft
from picker.policies.scorers import DEFAULT_STALE_SECS
from picker.routing.router import Choice

__all__ = ["Predicted"]


@dataclass(frozen=True, slots=True)
class Predicted:
    """The winner's predicted prefix match (0..1; None without a prefix index) and time to
    first token, analytic (None while the worker's prefill rate is unknown) and learned (None
    while the worker's latency model has too few samples: picker.fleet.latency_fit)."""

    hit: float | None
    ttft_secs: float | None
    learned_ttft_secs: float | None
    # What the learned model read (picker.fleet.latency_fit.features): the learner's update
    # at the request's end pairs them with the observed TTFT.
    features: tuple[float, ...]

    @classmethod
    def of(cls, choice: Choice, now: float,
           stale_after: float = DEFAULT_STALE_SECS) -> Predicted:
        """Taken before the lease counts this request's own prefill as work ahead of it:
        the same predictions the TTFT scorers make (picker.policies.scorers)."""
        worker = choice.worker
        engine = worker.engine
        waiting = engine.waiting if engine is not None and engine.waiting is not None else 0.0
        features = worker.latency_features(choice.uncached_tokens, now, stale_after)
        return cls(choice.match, predicted_ttft(worker.speed, choice.uncached_tokens, waiting,
                                                worker.prefill_ahead(now)),
                   worker.latency.predict(features), features)
