"""LatencyLearner: every finished request teaches its engine's latency model.

A lease watcher (picker.routing.leases.LeaseWatcher): at the decision it notes the features the
chosen worker showed (picker.fleet.latency_fit), before the lease counts this request's own
prefill as work ahead of it; when the response's first token was observed and the request
completed on that worker, the registry updates the worker's fit. Off the decision path: the
update runs where the lease closes, after the answer went out.
"""

from __future__ import annotations

import time

from picker.fleet.registry import WorkerRegistry
from picker.routing.leases import Lease, LeaseEnd
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice

__all__ = ["LatencyLearner"]


class LatencyLearner:
    def __init__(self, workers: WorkerRegistry, stale_after_secs: float) -> None:
        self._workers = workers
        self._stale = stale_after_secs

    def opened(self, choice: Choice, request: RoutingRequest) -> LeaseEnd | None:
        worker = choice.worker
        x = worker.latency_features(choice.uncached_tokens, time.monotonic(), self._stale)

        def ended(lease: Lease, outcome: Outcome, response: ResponseSample | None) -> None:
            # A lease that moved (Envoy retried elsewhere) was served under other features.
            if outcome is Outcome.COMPLETED and response is not None \
                    and response.ttft_secs is not None and lease.worker is worker:
                self._workers.learn_latency(worker, x, response.ttft_secs)

        return ended
