"""Weighted scorer profile: sum of weight x score over configured scorers, best total wins.

The framework, not the scorers, clamps scores to [0, 1], applies weights, treats unknown scores
as neutral (0.5) and breaks ties at random (the Gateway API Inference Extension's split of
scorers and picker). Example: `{scorers: {prefix: 3, queue: 2, in_flight: 1}}`.

Without `scorers`, the default profile weighs every signal the picker has: the prefix (3) when
the prefix index is enabled, and 1 each for the predicted time to first token (once engines'
speeds are learned; for a prompt no engine holds, behind the prefill the picker has just sent
each engine), free cache (smallest believed cache contents, with the prefix index),
the engine's queue and the in-flight count. A scorer without data is neutral,
so the profile degrades to load balancing on a fleet the picker knows nothing about.

A profile weighing `cache_space` also places a prompt no engine holds only on the engines it
fits in without filling their caches (`scorers.with_room`), when there are any: free cache is
then a condition, not only a score the speed scorers can outweigh.

A profile weighing `lora` also keeps a request on a LoRA adapter off the engines whose adapter
places are all taken by other adapters (`lora_scores.with_lora_place`), when another will do.

A request may carry `x-slo-ttft-ms`: candidates predicted to miss it are left out unless all
are (the scorers then choose among the rest; a worker of unknown speed is not predicted).
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, field_validator

from picker.fleet.engine_load import EngineSignal
from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, StaleAfterParams
from picker.policies.lora_scores import with_lora_place
from picker.policies.scorers import DEFAULT_STALE_SECS, SCORERS, request_ttft, with_room
from picker.routing.request import RoutingRequest

_NEUTRAL = 0.5
DEFAULT_PROFILE = {"prefix": 3.0, "ttft": 1.0, "cache_space": 1.0, "queue": 1.0,
                   "in_flight": 1.0}


class WeightedParams(StaleAfterParams):
    # Strict: a weight written "2" or true is a typo, not a number. None: DEFAULT_PROFILE,
    # which reads the prefix index when it is there rather than requiring it.
    scorers: dict[str, Annotated[float, Field(strict=True)]] | None = None

    @field_validator("scorers")
    @classmethod
    def _known_positive(cls, scorers: dict[str, float] | None) -> dict[str, float] | None:
        if scorers is None:
            return None
        unknown = sorted(set(scorers) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorers {unknown} (known: {', '.join(sorted(SCORERS))})")
        for name, weight in scorers.items():
            if not 0 <= weight < math.inf:
                raise ValueError(f"weight of scorer {name!r} must be >= 0, got {weight}")
        if not any(scorers.values()):
            raise ValueError("at least one scorer weight must be positive")
        return scorers

    def profile(self) -> dict[str, float]:
        return DEFAULT_PROFILE if self.scorers is None else self.scorers

    def needs_prefix(self) -> bool:
        return self.scorers is not None and any(
            SCORERS[name].needs_prefix for name, w in self.scorers.items() if w)

    def engine_signals(self) -> frozenset[EngineSignal]:
        return frozenset(signal for name, w in self.profile().items()
                         if w and (signal := SCORERS[name].reads) is not None)


class Weighted:
    name = "weighted"

    def __init__(self, params: WeightedParams) -> None:
        self._scorers = [(name, SCORERS[name].score, weight)
                         for name, weight in params.profile().items() if weight]
        self._spreads = bool(params.profile().get("cache_space"))
        self._lora = bool(params.profile().get("lora"))
        self._stale = params.stale_after_secs or DEFAULT_STALE_SECS
        self._rng = _random.Random(params.seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        if self._spreads:
            candidates = with_room(request, candidates)
        if self._lora:
            candidates = with_lora_place(request, candidates, time.monotonic(), self._stale)
        slo = request.slo_ttft_secs
        if slo is not None:
            candidates = self._meeting(request, candidates, slo, time.monotonic())
        totals = [0.0] * len(candidates)
        for _, weight, column in self._columns(request, candidates):
            for i, value in enumerate(column):
                totals[i] += weight * value
        best = max(totals)
        tied = [w for w, total in zip(candidates, totals, strict=True) if total >= best - 1e-12]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def scores(self, request: RoutingRequest,
               candidates: Sequence[Worker]) -> list[dict[str, float]]:
        """Per candidate, each scorer's score as `pick` weighs it and the weighted `total`
        (for decision records; picker.observe.decisions.Scoring)."""
        per: list[dict[str, float]] = [{"total": 0.0} for _ in candidates]
        for name, weight, column in self._columns(request, candidates):
            for scores, value in zip(per, column, strict=True):
                scores[name] = value
                scores["total"] += weight * value
        return per

    def _columns(self, request: RoutingRequest, candidates: Sequence[Worker]
                 ) -> list[tuple[str, float, list[float]]]:
        """(scorer, weight, clamped scores by candidate); unknown scores are neutral."""
        now = time.monotonic()
        # min(1.0, max(0.0, v)) without two calls per score (NaN and -0.0 give 0.0 as well).
        return [(name, weight, [_NEUTRAL if v is None else
                                v if 0.0 < v < 1.0 else 1.0 if v >= 1.0 else 0.0
                                for v in score(request, candidates, now, self._stale)])
                for name, score, weight in self._scorers]

    def _meeting(self, request: RoutingRequest, candidates: Sequence[Worker], slo: float,
                 now: float) -> Sequence[Worker]:
        """The candidates not predicted to miss the SLO (unknown speed is no prediction), or
        all of them when every one is predicted to miss it."""
        meeting = [w for w in candidates
                   if (t := request_ttft(request, w, now, self._stale)) is None or t <= slo]
        return meeting or candidates


DESCRIPTOR = PolicyDescriptor(Weighted.name, WeightedParams, Weighted)
