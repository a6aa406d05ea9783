"""LoRA affinity as a policy of its own: the engines readiest for the request's adapter
(picker.policies.lora_scores: active, then a free adapter place, then queued, never a full
engine while another will do), and among those the least loaded.

For requests that are not on an adapter, or engines without fresh LoRA metrics, every
candidate is equally ready and the policy is least_load. In `weighted`, the same rule is the
`lora` scorer, weighed against load and prefix scorers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from picker.fleet.engine_load import EngineSignal
from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, StaleAfterParams
from picker.policies.least_load import LeastLoad
from picker.policies.lora_scores import lora_scores
from picker.policies.scorers import DEFAULT_STALE_SECS
from picker.routing.request import RoutingRequest

# An engine whose readiness is unknown ranks between a free place and a queued adapter: it
# may have room, and is not known to be full.
_UNKNOWN = 0.7


class LoraAffinityParams(StaleAfterParams):

    def engine_signals(self) -> frozenset[EngineSignal]:
        return frozenset({EngineSignal.LORA})


class LoraAffinity:
    name = "lora_affinity"

    def __init__(self, params: LoraAffinityParams) -> None:
        self._stale = params.stale_after_secs or DEFAULT_STALE_SECS
        self._least = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        scores = [_UNKNOWN if s is None else s
                  for s in lora_scores(request, candidates, time.monotonic(), self._stale)]
        best = max(scores)
        return self._least.pick(request, [w for w, s in zip(candidates, scores, strict=True)
                                          if s == best])


DESCRIPTOR = PolicyDescriptor(LoraAffinity.name, LoraAffinityParams, LoraAffinity)
