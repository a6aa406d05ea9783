"""LoRA affinity: how ready each engine is to serve a request's adapter, and the filter that
keeps a new adapter off engines whose adapter places are all taken.

The rules are llm-d-router's lora-affinity-scorer (pkg/epp/framework/plugins/scheduling/
scorer/loraaffinity/README.md:9-14, lora_affinity.go:87-105), per engine, from its
`vllm:lora_requests_info` (picker.fleet.engine_load.LoraLoad):

- 1.0: the adapter is active there (it has requests running);
- 0.8: it is not, and the engine has a free adapter place (adapters in use < max_lora);
- 0.6: no free place, but the adapter is already queued there;
- 0.0: the engine is at max_lora and the adapter is neither active nor queued there.

One deviation, for vLLM as it is: llm-d counts the places in use as len(active) +
len(waiting), but vLLM 0.33 lists every adapter with requests under both labels
(vllm/v1/metrics/stats.py:700-704), so that sum counts each adapter twice and calls an engine
using 2 of its 4 places full. Here each adapter counts once (LoraLoad.in_use).

A request whose model is not an adapter of the engine (a base-model request), or an engine
without fresh LoRA metrics, gets no score: the combining policy treats that as neutral.
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.routing.request import RoutingRequest

__all__ = ["ACTIVE", "FREE_PLACE", "FULL", "QUEUED", "lora_score", "lora_scores",
           "place_score", "with_lora_place"]

ACTIVE, FREE_PLACE, QUEUED, FULL = 1.0, 0.8, 0.6, 0.0


def lora_score(request: RoutingRequest, worker: Worker, now: float,
               stale_after: float) -> float | None:
    """The llm-d rule for one engine; None when the request is not on one of its adapters
    or nothing is known."""
    if request.model not in worker.spec.adapters:
        return None
    return place_score(worker, request.model, now, stale_after)


def place_score(worker: Worker, adapter: str, now: float, stale_after: float) -> float | None:
    """The llm-d rule for `adapter` on one engine, whether or not the engine has it yet (the
    on-demand loader asks before loading); None without fresh LoRA metrics."""
    engine = worker.engine
    if engine is None or not engine.fresh(now, stale_after) or engine.lora is None:
        return None
    lora = engine.lora
    if adapter in lora.running:
        return ACTIVE
    if lora.max_loras is None or lora.in_use < lora.max_loras:
        return FREE_PLACE
    return QUEUED if adapter in lora.waiting else FULL


def lora_scores(request: RoutingRequest, candidates: Sequence[Worker], now: float,
                stale_after: float) -> list[float | None]:
    return [lora_score(request, w, now, stale_after) for w in candidates]


def with_lora_place(request: RoutingRequest, candidates: Sequence[Worker], now: float,
                    stale_after: float) -> Sequence[Worker]:
    """The candidates that are not full for this adapter (score above FULL, or unknown); all
    of them when every one is full, so a request is never refused for it (the engine queues
    it, as vLLM does)."""
    kept = [w for w, score in zip(candidates, lora_scores(request, candidates, now, stale_after),
                                  strict=True) if score != FULL]
    return kept or candidates
