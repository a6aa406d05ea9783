"""The admin API's response shapes, as /openapi.json documents them.

Routes declare them as response models, so FastAPI checks each answer against the documented
shape (an admin call is rare; the check is cheap), and schemathesis checks the document against
the running API: every status code an operation answers is listed, every error in one shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from picker.fleet.worker_spec import WorkerSpec

__all__ = ["ERRORS", "DecisionList", "DecisionView", "DrainResult", "ErrorBody", "Health",
           "Ready", "StatusView", "WorkerList", "WorkerView", "errors"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error the admin API answers, whatever its status."""

    error: ErrorDetail


class LoraView(BaseModel):
    """The engine's LoRA adapters with requests running / waiting, and its adapter places."""

    running: list[str]
    waiting: list[str]
    max_lora: int | None = None


class EngineView(BaseModel):
    """What the engine's last scrape said; a value it did not report is left out."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    lora: LoraView | None = None
    age_secs: float


class WorkerState(BaseModel):
    healthy: bool
    routable: bool
    draining: bool
    in_flight: int
    prefill_ahead: int  # uncached prompt tokens sent there, believed not yet prefilled
    circuit: dict[str, Any]
    last_health_check_age_secs: float | None = None  # absent: not checked yet
    engine: EngineView | None = None  # absent: not scraped (yet, or not a scraped runtime)


class WorkerView(WorkerSpec):
    """A worker as posted (api_key is write-only, never shown) plus its live state and owner."""

    model_config = ConfigDict(extra="forbid", title="WorkerView")

    state: WorkerState
    declared_in: str | None = None


class WorkerGroup(BaseModel):
    """A data-parallel engine registers one worker per rank."""

    workers: list[WorkerView]
    total: int


class FleetStats(BaseModel):
    """registry.RegistryStats (a typing.TypedDict, which pydantic reads only on 3.12+)."""

    total_workers: int
    healthy_workers: int
    total_models: int
    total_load: int
    by_type: dict[str, int]


class WorkerList(WorkerGroup):
    stats: FleetStats


class DrainResult(BaseModel):
    worker: WorkerView
    drained: bool
    # Every rank, when the key named a data-parallel worker by its registered url or id
    # (`worker` is then rank 0).
    ranks: list[WorkerView] | None = None


class RouterView(BaseModel):
    router: str = Field(description="connection mode and kind, e.g. http-regular, http-pd")
    policy: str
    workers: int
    healthy_workers: int
    models: list[str] = Field(description='"*" when a worker serves any model')


class RouterList(BaseModel):
    routers: list[RouterView]
    enable_igw: bool


class Health(BaseModel):
    status: str
    active_requests: int
    max_concurrent_requests: int | None  # None: unlimited


class Ready(BaseModel):
    status: str
    routable_workers: int
    total_workers: int


class DecisionCandidate(BaseModel):
    """A candidate's inputs as the policy read them (engine values as last scraped)."""

    worker: str
    in_flight: int
    circuit: str
    queue: float | None
    kv_usage: float | None
    engine_age_secs: float | None
    prefill_ahead: int  # uncached prompt tokens sent there, believed not yet prefilled
    match: float | None  # share of the prompt's blocks it was believed to hold
    match_blocks: int | None
    scores: dict[str, float] | None  # per scorer and `total`, for policies that score


class DecisionExclusion(BaseModel):
    worker: str
    reason: str  # other_model, other_role, unhealthy, draining, circuit_open, not_allowed,
    # cap_reached


class DecisionAudit(BaseModel):
    """What a decision predicted and what the response showed (picker.trace.audit)."""

    predicted_hit: float | None  # share of the prompt's blocks the winner was believed to hold
    observed_hit: float | None  # share of the prompt the engine reported cached
    predicted_ttft_secs: float | None
    observed_ttft_secs: float | None


class WorkerAudit(BaseModel):
    """A worker's recent prediction errors (picker.trace.audit)."""

    samples: int
    hit_error: float | None  # mean predicted minus reported cached share
    ttft_error_secs: float | None  # mean observed minus predicted TTFT
    drift: bool  # predicted hits keep not happening


class DecisionFlow(BaseModel):
    """Which flow and band flow control put the request in, and how long it waited there."""

    flow: str
    priority: int
    waited_secs: float


class DecisionView(BaseModel):
    """One decision (picker.observe.decisions): no prompt text, no worker url or key."""

    request_id: str
    time: float  # unix seconds
    age_secs: float
    model: str
    policy: str
    worker: str | None  # None: refused (`error` says why)
    role: str | None  # prefill or decode: one half of a pair's choice; None: a regular worker
    pair: str | None  # the pair's other worker
    error: str | None
    reason: str
    match: float | None
    prompt_blocks: int | None
    candidates: list[DecisionCandidate]
    excluded: list[DecisionExclusion]
    audit: DecisionAudit | None  # predicted against observed, once the response was seen
    flow: DecisionFlow | None  # flow control's part, when it is enabled


class DecisionList(BaseModel):
    decisions: list[DecisionView]
    total: int
    capacity: int


class ActivityView(BaseModel):
    rate: list[float | None]  # requests per second, per interval
    hit_rate: list[float | None]  # prefix hits / decisions, None without decisions


class HistoryView(BaseModel):
    period_secs: float
    ages_secs: list[float]
    workers: dict[str, ActivityView]


class ExplainView(BaseModel):
    enabled: bool
    allow_header: bool


class FlowQueue(BaseModel):
    """One flow of one band: waiting now, the oldest's wait, and requests that left it by
    outcome (picker.routing.flow.FlowOutcome's values)."""

    priority: int
    flow: str
    queued: int
    oldest_wait_secs: float
    left: dict[str, int]


class FlowView(BaseModel):
    """Flow control's flows, highest band first, and its dispatched requests not ended."""

    active: int
    flows: list[FlowQueue]


class StatusView(BaseModel):
    """Everything the status page shows, in one poll."""

    workers: list[WorkerView]
    stats: FleetStats
    active_requests: int
    draining: bool
    history: HistoryView
    policy: str
    policies: dict[str, dict[str, Any]]
    explain: ExplainView
    decisions: list[DecisionView]
    audit: dict[str, WorkerAudit]  # by worker id
    flow: FlowView | None  # None: flow control is off


ERRORS = {
    400: "Body is not valid JSON",
    401: "Authorization: Bearer <admin token> required",
    403: "Admin token rejected",
    404: "No worker with that url or id",
    409: "Conflict: already registered, or declared in the configuration file",
    413: "Body over the admin API's limit",
    422: "A field is invalid (`field` names it)",
    503: "The worker did not answer within discovery.max_wait_secs",
}


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all in the one error shape;
    `descriptions` replace the default ones (`s404="..."`)."""
    return {status: {"model": ErrorBody,
                     "description": descriptions.get(f"s{status}", ERRORS[status])}
            for status in statuses}
