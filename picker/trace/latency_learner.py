"""LatencyLearner: every finished request teaches its engine's latency model.

A lease watcher (picker.routing.leases.LeaseWatcher): at the decision it keeps the features the
chosen worker showed (picker.fleet.latency_fit, in the lease's `Predicted`), taken before the
lease counts this request's own prefill as work ahead of it; when the response's first token
was observed and the request completed on that worker, the registry updates the worker's fit.
Off the decision path: the update runs where the lease closes, after the answer went out.
"""

from __future__ import annotations

from picker.fleet.registry import WorkerRegistry
from picker.routing.leases import Lease, LeaseEnd
from picker.routing.outcome import Outcome
from picker.routing.predicted import Predicted
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice

__all__ = ["LatencyLearner"]


class LatencyLearner:
    needs_answer = True  # it learns from the answer's first token only

    def __init__(self, workers: WorkerRegistry) -> None:
        self._workers = workers

    def opened(self, choice: Choice, request: RoutingRequest,
               predicted: Predicted) -> LeaseEnd | None:
        worker, x = choice.worker, predicted.features

        def ended(lease: Lease, outcome: Outcome, response: ResponseSample | None) -> None:
            # A lease that moved (Envoy retried elsewhere) was served under other features.
            if outcome is Outcome.COMPLETED and response is not None \
                    and response.ttft_secs is not None and lease.worker is worker:
                self._workers.learn_latency(worker, x, response.ttft_secs)

        return ended
