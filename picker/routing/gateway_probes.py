"""Health probes sent through the gateway (`GET /health` with no body): answered by a worker
that can take traffic now, so a load balancer or Kubernetes probe in front of the gateway
learns whether the fleet can serve.

The reference picker sends every request without a body to a random endpoint of its
datastore, healthy or not (llm-d-router pkg/epp/handlers/request.go:41-48,
fallbackToRandomEndpoint). Here only probes of the engines' health path are forwarded, to a
random *routable* worker, and when none is routable the probe gets the picker's JSON 503:
that is the gateway's health. Other requests without a body (an empty POST to an OpenAI path)
keep the picker's clear 400 naming what is missing, where the reference would spend an engine
slot for the engine's own error.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from picker.errors import NoHealthyWorker
from picker.fleet.registry import Worker

__all__ = ["PROBE_PATHS", "is_probe", "probe_target"]

# vLLM's and SGLang's liveness path (both serve GET /health, 200 when the engine is up).
PROBE_PATHS = frozenset({"/health"})


def is_probe(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and path.partition("?")[0] in PROBE_PATHS


def probe_target(workers: Iterable[Worker]) -> Worker:
    """A random routable worker; NoHealthyWorker when there is none."""
    routable = [w for w in workers if w.routable]
    if not routable:
        raise NoHealthyWorker("no worker is routable: the gateway cannot serve now")
    return random.choice(routable)
