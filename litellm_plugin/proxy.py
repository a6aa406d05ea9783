"""The picker inside the LiteLLM proxy, with no Python of the user's own:

    litellm_settings:
      callbacks: ["litellm_plugin.proxy_hook"]

Settings come from `LLM_PICKER_CONFIG` (a picker YAML file) and `LLM_PICKER_*` variables. The
proxy imports `proxy_hook` while it starts, and that import builds and starts the picker's
runtime: a bad setting, or an admin port in use, stops the proxy's start-up with the error
naming the key, instead of failing every request later. The hook narrows LiteLLM's healthy
deployments to the one the picker chooses, so LiteLLM's own retries, cooldowns and fallbacks
still apply; the same callback tracks in-flight requests (it is the process's InFlightTracker).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from litellm_plugin.choose import EXPLAIN_KEY, Call, choose_deployment
from litellm_plugin.deployments import OWNER, DeploymentSource
from litellm_plugin.tracking import InFlightTracker, lease_token
from picker.observe.decisions import EXPLAIN_HEADER
from picker.routing.outcome import Outcome
from picker.runtime import PickerRuntime

__all__ = ["CONFIG_ENV", "ProxyPicker"]

# Names the picker YAML file; read by the proxy hook only (not a config key).
CONFIG_ENV = "LLM_PICKER_CONFIG"
log = logging.getLogger("llm_picker.litellm")


class ProxyPicker(InFlightTracker):
    def __init__(self, runtime: PickerRuntime, deployments: DeploymentSource) -> None:
        super().__init__()
        self.runtime = runtime
        self._picker = runtime.routing
        self._deployments = deployments

    @classmethod
    def from_environment(cls) -> ProxyPicker:
        """Load the configuration from the environment and start the runtime (on a thread of
        its own: the proxy's loop is not running yet when callbacks are imported)."""
        # The proxy's router may not exist yet: the source follows its model list (/model/new,
        # /model/delete) from the first moment it does, so health checks and engine metrics
        # start before the first request.
        deployments = DeploymentSource(_proxy_model_list, "the proxy's")
        runtime = PickerRuntime.in_litellm(os.environ.get(CONFIG_ENV), deployments,
                                           started_as="attached to the LiteLLM proxy",
                                           log_to_stderr=True)
        log.info("the proxy's deployments with an api_base become workers owned by %r", OWNER)
        return cls(runtime, deployments)

    async def async_filter_deployments(
        self, model: str, healthy_deployments: list[Any], messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None, parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        call = Call(model, healthy_deployments, messages, (request_kwargs or {}).get("input"),
                    request_kwargs)
        return [await choose_deployment(self._picker, self._deployments, self, call)]

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any],
    ) -> AsyncGenerator[Any, None]:
        """Every chunk as it comes; a stream the client leaves before its end releases its slot
        here, as cancelled. LiteLLM reports neither success nor failure for it: its streaming
        path re-raises the cancellation before the stream's deferred logging (litellm 1.106.12,
        litellm/proxy/utils.py:4351-4357 and 4432, ProxyLogging.
        async_post_call_streaming_iterator_hook), so the slot would be held until
        limits.timeout_secs."""
        try:
            async for chunk in response:
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            logging_obj = getattr(response, "logging_obj", None)
            details = getattr(logging_obj, "model_call_details", None)
            self.end(lease_token(details if isinstance(details, dict) else request_data),
                     Outcome.CANCELLED)
            raise

    async def async_post_call_response_headers_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: object,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, object] | None = None,
    ) -> dict[str, str] | None:
        """The explain header (explain.allow_header, asked for with x-llm-picker-explain: 1),
        as Envoy adds it on the ext_proc path."""
        for key in ("metadata", "litellm_metadata"):
            holder = data.get(key)
            if isinstance(holder, dict) and isinstance(holder.get(EXPLAIN_KEY), str):
                return {EXPLAIN_HEADER: holder[EXPLAIN_KEY]}
        return None


def _proxy_model_list() -> list[dict[str, Any]]:
    """Every deployment the proxy knows (follows /model/new and /model/delete)."""
    try:
        from litellm.proxy import proxy_server
    except ImportError:
        return []
    router = getattr(proxy_server, "llm_router", None)
    return list(getattr(router, "model_list", []) or [])
