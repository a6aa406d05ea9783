"""The one decision both LiteLLM entry points make: which of these healthy deployments.

`choose_deployment` (async: the proxy's filter and the Router's async selector) and
`choose_deployment_sync` (the Router's sync selector) differ only in how they call the runtime's
one entry point; the request building and the lease hand-over (`_Choice`) are shared.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from litellm.exceptions import ServiceUnavailableError

from litellm_plugin.deployments import DeploymentSource, wait_for, wait_for_async
from litellm_plugin.errors import to_litellm_error
from litellm_plugin.tracking import InFlightTracker, Observer, caller_metadata
from picker.errors import RequestError
from picker.routing.contract import Picker
from picker.routing.leases import Lease
from picker.routing.openai_body import request_from_data
from picker.routing.request import Api, RoutingRequest

__all__ = ["EXPLAIN_KEY", "Call", "choose_deployment", "choose_deployment_sync", "plain"]

# Where a call's explain line waits in its metadata for the response (explain.allow_header).
EXPLAIN_KEY = "llm_picker_explain"

Deployment = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """What LiteLLM hands a selector for one call."""

    model: str
    healthy: list[Deployment]
    messages: list[Any] | None
    input: Any
    request_kwargs: dict[str, Any] | None


async def choose_deployment(picker: Picker, fleet: DeploymentSource,
                            tracker: InFlightTracker, call: Call) -> Deployment:
    """The picker's policy among LiteLLM's healthy deployments; takes the in-flight slot."""
    await wait_for_async(fleet.catch_up(call.healthy))
    choice = _Choice(picker, fleet, call)
    if choice.request is not None:
        with _refusals(picker, call.model):
            choice.lease = await picker.route(choice.request, set(choice.by_worker))
    return choice.hand_over(tracker)


def choose_deployment_sync(picker: Picker, fleet: DeploymentSource,
                           tracker: InFlightTracker, call: Call) -> Deployment:
    """`choose_deployment` for LiteLLM's synchronous `completion()`."""
    wait_for(fleet.catch_up(call.healthy))
    choice = _Choice(picker, fleet, call)
    if choice.request is not None:
        with _refusals(picker, call.model):
            choice.lease = picker.route_sync(choice.request, set(choice.by_worker))
    return choice.hand_over(tracker)


class _Choice:
    """One call's routing request and candidates by worker id; `request` is None when the
    picker has nothing to decide (no engine it knows among the healthy deployments)."""

    def __init__(self, picker: Picker, fleet: DeploymentSource, call: Call) -> None:
        if not call.healthy:
            raise ServiceUnavailableError(message=f"no healthy deployment for {call.model}",
                                          model=call.model, llm_provider="")
        self._call = call
        self.lease: Lease | None = None
        self.request: RoutingRequest | None = None
        self.by_worker: dict[str, Deployment] = {}
        for deployment in call.healthy:
            worker_id = fleet.worker_id(deployment)
            if worker_id is not None:
                self.by_worker.setdefault(worker_id, deployment)
        if self.by_worker:
            with _refusals(picker, call.model):
                self.request = _routing_request(call)
        self._picker = picker

    def hand_over(self, tracker: InFlightTracker) -> Deployment:
        if self.lease is None:
            return random.choice(self._call.healthy)  # none is an engine the picker knows
        assert self.request is not None
        # The call's timing and usage, when LiteLLM reports them, teach the engine's speed.
        observer = Observer(self._picker, len(self.request.prompt_text))
        caller = caller_metadata(self._call.request_kwargs)
        own = tracker.begin(self._call.request_kwargs, self.lease, observer)
        line = self._picker.explanation(self.request.headers, self.lease)
        if line is not None:
            # The proxy's response-headers hook sends it from the call's own metadata; an SDK
            # caller reads it from the dict it passed.
            for metadata in (own, caller):
                if isinstance(metadata, dict):
                    metadata[EXPLAIN_KEY] = line
        return self.by_worker[self.lease.worker.id]


def _routing_request(call: Call) -> RoutingRequest:
    """The call as the core reads it: chat, Anthropic Messages (Router.aanthropic_messages
    passes `system` among the call's kwargs), rerank (Router.arerank passes `query` and
    `documents` there, and no messages) or embeddings."""
    data: dict[str, Any] = {"model": call.model}
    kwargs = call.request_kwargs or {}
    if call.messages is not None:
        api, data["messages"] = Api.CHAT, [plain(m) for m in call.messages]
        if kwargs.get("system") is not None:
            api, data["system"] = Api.MESSAGES, kwargs["system"]
    elif "query" in kwargs and "documents" in kwargs:
        api, data["query"] = Api.RERANK, kwargs["query"]
    else:
        api, data["input"] = Api.EMBEDDINGS, call.input if call.input is not None else ""
    headers: Mapping[str, str] = {}
    flow_id = None
    metadata = caller_metadata(call.request_kwargs)
    if isinstance(metadata, dict):
        if isinstance(metadata.get("headers"), dict):
            headers = {str(k).lower(): str(v) for k, v in metadata["headers"].items()}
        flow_id = _flow_id(metadata)
    # A gRPC deployment's call is transcoded by LiteLLM's provider (grpc_provider), with the
    # call's sampling parameters this request does not carry.
    return replace(request_from_data(api, data, headers), flow_id=flow_id,
                   caller_transcodes=True)


def _flow_id(metadata: Mapping[str, Any]) -> str | None:
    """The flow LiteLLM's proxy authenticated the call as: its team, else its key's alias
    (the proxy's `user_api_key_team_id` / `user_api_key_alias` metadata); None without."""
    for key, kind in (("user_api_key_team_id", "team"), ("user_api_key_alias", "key")):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return f"{kind}:{value}"
    return None


@contextlib.contextmanager
def _refusals(picker: Picker, model: str) -> Iterator[None]:
    """The picker's refusal, counted, as LiteLLM's exception of the same meaning."""
    try:
        yield
    except RequestError as error:
        picker.reject(error)
        raise to_litellm_error(error, model) from error


def plain(message: Any) -> Any:
    """LiteLLM may hand over its pydantic `Message` objects instead of dicts; the core reads
    OpenAI JSON, so they are turned back into it (unset fields left out, as a client sends)."""
    dump = getattr(message, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else message
