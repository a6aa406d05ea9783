"""The one decision both LiteLLM entry points make: which of these healthy deployments.

`choose_deployment` (async: the proxy's filter and the Router's async selector) and
`choose_deployment_sync` (the Router's sync selector) differ only in how they call the runtime's
one entry point; the request building and the lease hand-over are shared.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from litellm.exceptions import ServiceUnavailableError

from litellm_plugin.errors import to_litellm_error
from litellm_plugin.fleet import DeploymentFleet
from litellm_plugin.tracking import InFlightTracker, Observer
from picker.errors import RequestError
from picker.leases import Lease
from picker.openai_body import request_from_data
from picker.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

__all__ = ["choose_deployment", "choose_deployment_sync"]

Deployment = dict[str, Any]


async def choose_deployment(
    runtime: PickerRuntime, fleet: DeploymentFleet, tracker: InFlightTracker, *, model: str,
    healthy: list[Deployment], all_deployments: Iterable[Mapping[str, Any]],
    messages: list[Any] | None, input: Any, request_kwargs: dict[str, Any] | None,
) -> Deployment:
    """The picker's policy among LiteLLM's healthy deployments; takes the in-flight slot."""
    prepared = _prepare(fleet, model, healthy, all_deployments, messages, input, request_kwargs)
    if not isinstance(prepared, tuple):
        return prepared
    request, by_worker = prepared
    try:
        lease = await runtime.route(request, set(by_worker))
    except RequestError as error:
        raise _refused(runtime, error, model) from error
    return _hand_over(tracker, request_kwargs, lease, by_worker,
                      Observer(runtime.registry, len(request.prompt_text)))


def choose_deployment_sync(
    runtime: PickerRuntime, fleet: DeploymentFleet, tracker: InFlightTracker, *, model: str,
    healthy: list[Deployment], all_deployments: Iterable[Mapping[str, Any]],
    messages: list[Any] | None, input: Any, request_kwargs: dict[str, Any] | None,
) -> Deployment:
    """`choose_deployment` for LiteLLM's synchronous `completion()`."""
    prepared = _prepare(fleet, model, healthy, all_deployments, messages, input, request_kwargs)
    if not isinstance(prepared, tuple):
        return prepared
    request, by_worker = prepared
    try:
        lease = runtime.route_sync(request, set(by_worker))
    except RequestError as error:
        raise _refused(runtime, error, model) from error
    return _hand_over(tracker, request_kwargs, lease, by_worker,
                      Observer(runtime.registry, len(request.prompt_text)))


def _prepare(
    fleet: DeploymentFleet, model: str, healthy: list[Deployment],
    all_deployments: Iterable[Mapping[str, Any]], messages: list[Any] | None, input: Any,
    request_kwargs: dict[str, Any] | None,
) -> Deployment | tuple[RoutingRequest, dict[str, Deployment]]:
    """The routing request and the candidates by worker id, or the answer when the picker
    has nothing to decide (no engine it knows among them)."""
    if not healthy:
        raise ServiceUnavailableError(message=f"no healthy deployment for {model}",
                                      model=model, llm_provider="")
    fleet.sync(all_deployments)
    by_worker: dict[str, Deployment] = {}
    for deployment in healthy:
        worker_id = fleet.worker_id(deployment)
        if worker_id is not None:
            by_worker.setdefault(worker_id, deployment)
    if not by_worker:
        return random.choice(healthy)  # none of them is an engine the picker knows
    data: dict[str, Any] = {"model": model}
    if messages is not None:
        api, data["messages"] = Api.CHAT, [_plain(m) for m in messages]
    else:
        api, data["input"] = Api.EMBEDDINGS, input if input is not None else ""
    headers: Mapping[str, str] = {}
    metadata = (request_kwargs or {}).get("metadata") or {}
    if isinstance(metadata, dict) and isinstance(metadata.get("headers"), dict):
        headers = {str(k).lower(): str(v) for k, v in metadata["headers"].items()}
    try:
        request = request_from_data(api, data, headers)
    except RequestError as error:
        raise to_litellm_error(error, model) from error
    return request, by_worker


def _hand_over(tracker: InFlightTracker, request_kwargs: dict[str, Any] | None, lease: Lease,
               by_worker: dict[str, Deployment], observer: Observer) -> Deployment:
    tracker.begin(request_kwargs, lease, observer)
    return by_worker[lease.worker.id]


def _refused(runtime: PickerRuntime, error: RequestError, model: str) -> Exception:
    runtime.reject(error)
    return to_litellm_error(error, model)


def _plain(message: Any) -> Any:
    """LiteLLM may hand over its pydantic `Message` objects instead of dicts; the core reads
    OpenAI JSON, so they are turned back into it (unset fields left out, as a client sends)."""
    dump = getattr(message, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else message
