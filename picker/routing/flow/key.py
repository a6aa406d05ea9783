"""A request's flow: who it is for (fairness id) and how much it matters (priority).

llm-d-router keys flows the same way, `FlowKey{ID, Priority}`
(pkg/epp/requestcontrol/admission.go:236-238), takes the fairness id from
x-gateway-inference-fairness-id with "default-flow" when absent
(pkg/epp/metadata/consts.go:64-67) and the priority from the InferenceObjective the request
names, unset meaning 0 and negative meaning sheddable
(apix/v1alpha2/inferenceobjective_types.go:60-73). Unlike llm-d, the picker reads these client
headers only when the operator says the proxy in front vets them (`trust_client_headers`): a
client that names its own flow or priority could otherwise jump every queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from picker.errors import InvalidRequest
from picker.routing import control_headers
from picker.routing.flow.objectives import Objectives
from picker.routing.flow.settings import MAX_FLOW_ID_CHARS, FlowSettings
from picker.routing.request import RoutingRequest
from picker.trace.hashing import CHARS_PER_TOKEN

__all__ = ["FlowAsk", "FlowKey", "flow_ask", "flow_key", "listing_order"]



@dataclass(frozen=True, slots=True, order=True)
class FlowKey:
    priority: int
    fairness_id: str

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


def listing_order(key: FlowKey) -> tuple[int, str]:
    """How flows are listed (status page, stats): the highest band first, then by flow id."""
    return -key.priority, key.fairness_id


@dataclass(frozen=True, slots=True)
class FlowAsk:
    """What flow control needs of a request."""

    key: FlowKey
    model: str
    tokens: float  # prompt tokens, counted or estimated
    slo_ttft_secs: float | None = None  # the client's deadline for its first token


def flow_key(headers: Mapping[str, str], settings: FlowSettings, objectives: Objectives,
             override: str | None = None) -> FlowKey:
    """The request's flow. `override`: a fairness id the host itself vouches for (LiteLLM's
    key or team), used before any header."""
    fairness_id = override
    priority = 0
    if settings.trust_client_headers:
        if fairness_id is None and settings.fairness_header is not None:
            fairness_id = headers.get(settings.fairness_header)
        if fairness_id is None:
            fairness_id = control_headers.client_value(headers, control_headers.FAIRNESS_ID)
        objective = control_headers.client_value(headers, control_headers.OBJECTIVE)
        if objective is not None:
            priority = objectives.priority(objective)
    if not fairness_id:
        fairness_id = settings.default_flow
    if len(fairness_id) > MAX_FLOW_ID_CHARS:
        raise InvalidRequest(f"fairness id longer than {MAX_FLOW_ID_CHARS} characters",
                             param=control_headers.FAIRNESS_ID)
    return FlowKey(priority, fairness_id)


def flow_ask(request: RoutingRequest, settings: FlowSettings,
             objectives: Objectives) -> FlowAsk:
    """What flow control needs of `request`: its flow, model, prompt tokens (counted when the
    request was tokenized, else estimated from its text) and first-token deadline."""
    tokens = len(request.tokens) if request.tokens is not None \
        else -(-len(request.prompt_text) // CHARS_PER_TOKEN)
    key = flow_key(request.headers, settings, objectives, request.flow_id)
    return FlowAsk(key, request.model, float(tokens), request.slo_ttft_secs)
