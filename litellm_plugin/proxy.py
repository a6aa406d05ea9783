"""The picker inside the LiteLLM proxy, with no Python of the user's own:

    litellm_settings:
      callbacks: ["litellm_plugin.proxy_hook"]

Settings come from `LLM_PICKER_CONFIG` (a picker YAML file) and `LLM_PICKER_*` variables, read
on the first request. The hook narrows LiteLLM's healthy deployments to the one the picker
chooses, so LiteLLM's own retries, cooldowns and fallbacks still apply; the same callback
tracks in-flight requests (it is the process's InFlightTracker).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from litellm_plugin.choose import choose_deployment
from litellm_plugin.fleet import DeploymentFleet
from litellm_plugin.tracking import InFlightTracker
from picker.admin import serve_admin_in_thread
from picker.config import load_config
from picker.router import Router, build_router

__all__ = ["ProxyPicker"]


class ProxyPicker(InFlightTracker):
    def __init__(self) -> None:
        super().__init__()
        self._core: Router | None = None
        self._fleet: DeploymentFleet | None = None
        self._build_lock = threading.Lock()

    def _ready(self) -> tuple[Router, DeploymentFleet]:
        """Built on first use: importing the module (LiteLLM does at start-up) does no I/O."""
        with self._build_lock:
            if self._core is None or self._fleet is None:
                config = load_config(os.environ.get("LLM_PICKER_CONFIG"), env=os.environ)
                self._core = build_router(config)
                self._fleet = DeploymentFleet(self._core.workers)
                if config.admin.enabled:
                    serve_admin_in_thread(self._core, config)
            return self._core, self._fleet

    async def async_filter_deployments(
        self, model: str, healthy_deployments: list[Any], messages: list[Any] | None,
        request_kwargs: dict[str, Any] | None = None, parent_otel_span: Any = None,
    ) -> list[dict[str, Any]]:
        core, fleet = self._ready()
        chosen = choose_deployment(
            core, fleet, self, model=model, healthy=healthy_deployments,
            all_deployments=_proxy_model_list() or healthy_deployments, messages=messages,
            input=(request_kwargs or {}).get("input"), request_kwargs=request_kwargs,
        )
        return [chosen]


def _proxy_model_list() -> list[dict[str, Any]]:
    """Every deployment the proxy knows (follows /model/new and /model/delete)."""
    try:
        from litellm.proxy import proxy_server
    except ImportError:
        return []
    router = getattr(proxy_server, "llm_router", None)
    return list(getattr(router, "model_list", []) or [])
