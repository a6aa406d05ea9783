"""The picker as a LiteLLM Router routing strategy (SDK).

    from litellm import Router
    from litellm_plugin import PickerStrategy
    router = Router(model_list=[...])
    PickerStrategy.attach(router, config="picker.yaml")  # or policy="prefix_cache", ...

LiteLLM keeps retries, cooldowns and fallbacks: the strategy first asks the router for its
healthy (not cooled-down) deployments, then lets the picker's policy choose among them. The
in-flight slot is released when the call ends, by the callback this
attaches (`InFlightTracker`); the slot is taken at the pick, so a burst of concurrent calls
is balanced by load-aware policies instead of all seeing idle engines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litellm.router import Router as LiteLLMRouter
from litellm.types.router import CustomRoutingStrategyBase

from litellm_plugin.choose import choose_deployment
from litellm_plugin.fleet import DeploymentFleet
from litellm_plugin.tracking import InFlightTracker
from picker.admin import serve_admin_in_thread
from picker.config import load_config
from picker.router import Router, build_router

__all__ = ["PickerStrategy"]


class PickerStrategy(CustomRoutingStrategyBase):
    def __init__(self, router: LiteLLMRouter, core: Router) -> None:
        self._router = router
        self.core = core
        self.fleet = DeploymentFleet(core.workers)
        self.tracker = InFlightTracker.installed()

    @classmethod
    def attach(cls, router: LiteLLMRouter, config: str | Path | None = None,
               **settings: Any) -> PickerStrategy:
        """Install on `router`: settings are picker config keys (`policy="least_load"`,
        `prefix={"enabled": True}`), overriding the file; workers come from LiteLLM."""
        overrides = {key: value for key, value in settings.items()}
        picker_config = load_config(config, env=os.environ, overrides=overrides)
        strategy = cls(router, build_router(picker_config))
        router.set_custom_routing_strategy(strategy)
        if picker_config.admin.enabled:
            serve_admin_in_thread(strategy.core, picker_config)
        return strategy

    # LiteLLM's base class annotates these as returning None; they return the deployment.
    async def async_get_available_deployment(  # type: ignore[override]
        self, model: str, messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None, specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        healthy = await self._router.async_get_healthy_deployments(
            model=model, request_kwargs=request_kwargs or {}, messages=messages, input=input,
            specific_deployment=specific_deployment,
        )
        return self._choose(model, healthy, messages, input, request_kwargs)

    def get_available_deployment(  # type: ignore[override]
        self, model: str, messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None, specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # LiteLLM has no public synchronous "healthy deployments" call; this is the one its
        # own sync selector uses (cooldowns and blocked deployments filtered out).
        found = self._router._get_healthy_deployments(model, None)
        healthy = found[0] if isinstance(found, tuple) else found
        return self._choose(model, healthy, messages, input, request_kwargs)

    def _choose(self, model: str, healthy: list[dict[str, Any]] | dict[str, Any],
                messages: list[dict[str, str]] | None, input: str | list[Any] | None,
                request_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        if isinstance(healthy, dict):
            return healthy  # a specific deployment was asked for
        return choose_deployment(
            self.core, self.fleet, self.tracker, model=model, healthy=healthy,
            all_deployments=self._router.model_list, messages=messages, input=input,
            request_kwargs=request_kwargs,
        )
