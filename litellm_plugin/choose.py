"""The one decision both LiteLLM entry points make: which of these healthy deployments."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from litellm.exceptions import ServiceUnavailableError

from litellm_plugin.errors import to_litellm_error
from litellm_plugin.fleet import DeploymentFleet
from litellm_plugin.tracking import InFlightTracker
from picker.errors import RequestError
from picker.openai_body import request_from_data
from picker.request import Api
from picker.router import Router

__all__ = ["choose_deployment"]


def choose_deployment(
    core: Router, fleet: DeploymentFleet, tracker: InFlightTracker, *, model: str,
    healthy: list[dict[str, Any]], all_deployments: Iterable[Mapping[str, Any]],
    messages: list[Any] | None, input: Any, request_kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    """The picker's policy among LiteLLM's healthy deployments; takes the in-flight slot."""
    if not healthy:
        raise ServiceUnavailableError(message=f"no healthy deployment for {model}",
                                      model=model, llm_provider="")
    fleet.sync(all_deployments)
    by_worker: dict[str, dict[str, Any]] = {}
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
        worker = core.choose(request_from_data(api, data, headers), set(by_worker))
        tracker.begin(request_kwargs, core, worker)  # takes the slot: may be Overloaded (429)
    except RequestError as error:
        core.reject(error)
        raise to_litellm_error(error, model) from error
    return by_worker[worker.id]


def _plain(message: Any) -> Any:
    """LiteLLM may hand over its pydantic `Message` objects instead of dicts; the core reads
    OpenAI JSON, so they are turned back into it (unset fields left out, as a client sends)."""
    dump = getattr(message, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else message
