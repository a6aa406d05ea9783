"""`flow:` in the configuration: who is which flow, the bands, the queues' bounds, the quotas
and when an engine counts as saturated.

Off unless `flow.enabled`: then flow control replaces the single admission queue of `limits:`
(whose `max_concurrent_requests` still caps what is dispatched at once).
"""

from __future__ import annotations

import enum
import math
from typing import Annotated

from pydantic import Field

from picker.strict import StrictModel

__all__ = ["MAX_FLOW_ID_CHARS", "FairnessKind", "FlowSettings", "OrderingKind", "QuotaSettings",
           "SaturationSettings"]

# A client-chosen id becomes a metrics label and a dict key: bounded (a longer one is refused
# on the request, so a configured one could never match).
MAX_FLOW_ID_CHARS = 200
FlowId = Annotated[str, Field(min_length=1, max_length=MAX_FLOW_ID_CHARS)]


class FairnessKind(enum.StrEnum):
    """How a band shares dispatch between its backlogged flows."""

    ROUND_ROBIN = "round_robin"  # one request per flow in turn
    TOKENS = "tokens"  # least served tokens first (prompt + generated), VTC-style


class OrderingKind(enum.StrEnum):
    """The order inside one flow's queue."""

    FCFS = "fcfs"
    EDF = "edf"  # earliest deadline: arrival + x-slo-ttft-ms, else arrival + ttl


class QuotaSettings(StrictModel):
    """A flow's budget per rolling minute; 0: no limit on that dimension."""

    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)


class SaturationSettings(StrictModel):
    """When a worker takes no more dispatches: any threshold reached (0 turns one off).

    In-flight is the picker's own exact count; waiting and KV usage come from the engine's
    metrics scrape (`load:`), ignored when older than `max_age_secs`; the predicted TTFT needs
    the engine's prefill rate learned (picker.fleet.speed)."""

    max_in_flight_per_worker: int = Field(default=0, ge=0)
    # Sheddable (negative priority) requests are dispatched to a worker only while its
    # in-flight count, every band's, is under this part of max_in_flight_per_worker: the rest
    # is headroom for higher bands, whose requests then need not wait for a slot to end.
    sheddable_share: float = Field(default=1.0, gt=0, le=1)
    # With max_in_flight_per_worker: sheddable requests also leave free as many of the
    # model's slots as the higher bands need to find one free all but this share of the time,
    # sized on their recent in-flight count (picker.routing.flow.headroom). 0: none kept.
    headroom_miss_rate: float = Field(default=0.01, ge=0, lt=1)
    max_waiting: float = Field(default=0.0, ge=0)
    max_kv_usage: float = Field(default=0.0, ge=0, le=1)
    max_predicted_ttft_secs: float = Field(default=0.0, ge=0)
    max_age_secs: float = Field(default=5.0, gt=0)


class FlowSettings(StrictModel):
    enabled: bool = False
    # Client-sent flow and objective headers are honoured only when the proxy in front sets
    # or vets them; otherwise every request is the default flow at priority 0.
    trust_client_headers: bool = False
    # Another header naming the flow (e.g. one the gateway sets from an API key), trusted like
    # the others; read before x-gateway-inference-fairness-id.
    fairness_header: str | None = Field(default=None, min_length=1, pattern=r"^[a-z0-9-]+$")
    default_flow: FlowId = "default-flow"
    # InferenceObjective name -> priority (higher first; negative is sheddable).
    objectives: dict[str, int] = Field(default_factory=dict)
    fairness: FairnessKind = FairnessKind.ROUND_ROBIN
    ordering: OrderingKind = OrderingKind.FCFS
    # How many may wait in all, and per band (priority -> bound; other bands share `max_queued`).
    max_queued: int = Field(default=1000, ge=0)
    band_max_queued: dict[int, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    # Under envoy/envoy.yaml's 5 s ext_proc message_timeout (llm-picker envoy-config raises it).
    ttl_secs: float = Field(default=3.0, gt=0)
    # How long a request that found no routable worker for its model may wait for one (scale
    # from zero; llm-d-router's noEndpointRequestTTL, pkg/epp/flowcontrol/README.md:68-75,
    # except that the budget is fixed on arrival). 0: refuse at once, as without flow control.
    no_worker_ttl_secs: float = Field(default=0.0, ge=0)
    retry_after_secs: int = Field(default=1, ge=0)
    # Per flow id; flows not listed get `default_quota` (each flow its own budget of that size).
    quotas: dict[FlowId, QuotaSettings] = Field(default_factory=dict)
    default_quota: QuotaSettings = Field(default_factory=QuotaSettings)
    # The part of every quota this picker enforces: replicas share no budget, so R replicas
    # behind a proxy spreading streams evenly over them each take 1/R (rounded up; at least
    # one request or token). 1: each replica enforces the whole budget.
    replica_share: float = Field(default=1.0, gt=0, le=1)
    saturation: SaturationSettings = Field(default_factory=SaturationSettings)
    # When a request of a non-sheddable band (priority >= 0) finds no free slot for its model,
    # end a running request of a sheddable band (negative priority) to make one, as
    # llm-d-router's flow control evicts (pkg/epp/flowcontrol/eviction/
    # demand_driven_handler.go: a lower band's in-flight requests, one per blocked request).
    # That client gets 503 `preempted` with Retry-After, or a reset stream if its answer had
    # begun. Only requests the adapter can end take part: ext_proc's.
    preempt: bool = False

    def quota(self, flow: FlowId) -> QuotaSettings:
        """`flow`'s budget as this picker enforces it (its `replica_share`)."""
        quota = self.quotas.get(flow, self.default_quota)
        if self.replica_share == 1:
            return quota
        return QuotaSettings(
            requests_per_minute=math.ceil(quota.requests_per_minute * self.replica_share),
            tokens_per_minute=math.ceil(quota.tokens_per_minute * self.replica_share))
