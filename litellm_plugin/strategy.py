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

`attach` starts a full PickerRuntime (health checks, engine metrics, lease expiry, the admin API
when enabled) on a thread of its own; `detach` stops it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litellm.router import Router as LiteLLMRouter
from litellm.types.router import CustomRoutingStrategyBase

from litellm_plugin.choose import Call, choose_deployment, choose_deployment_sync
from litellm_plugin.deployments import DeploymentSource
from litellm_plugin.tracking import InFlightTracker
from picker.runtime import PickerRuntime

__all__ = ["PickerStrategy"]


class PickerStrategy(CustomRoutingStrategyBase):
    def __init__(self, router: LiteLLMRouter, runtime: PickerRuntime,
                 deployments: DeploymentSource) -> None:
        self._router = router
        self.runtime = runtime
        self._picker = runtime.routing
        self._deployments = deployments
        self.tracker = InFlightTracker.installed()

    @classmethod
    def attach(cls, router: LiteLLMRouter, config: str | Path | None = None,
               **settings: Any) -> PickerStrategy:
        """Install on `router`: settings are picker config keys (`policy="least_load"`,
        `prefix={"enabled": True}`), overriding the file; workers come from LiteLLM."""
        deployments = DeploymentSource(lambda: router.model_list, "the Router's")
        runtime = PickerRuntime.in_litellm(config, deployments, settings,
                                           started_as="installed as a LiteLLM Router strategy")
        strategy = cls(router, runtime, deployments)
        router.set_custom_routing_strategy(strategy)
        return strategy

    def detach(self) -> None:
        """Give the router back LiteLLM's own routing (unless another strategy has replaced
        this one since), release the calls this strategy still holds slots for, and stop the
        picker's runtime (its background services and admin API)."""
        for name in ("get_available_deployment", "async_get_available_deployment"):
            installed = self._router.__dict__.get(name)
            if getattr(installed, "__self__", None) is self:
                delattr(self._router, name)
        self.tracker.drop(self._picker)
        self.runtime.stop_thread()

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
        if isinstance(healthy, dict):
            return healthy  # a specific deployment was asked for
        call = Call(model, healthy, messages, input, request_kwargs)
        return await choose_deployment(self._picker, self._deployments, self.tracker, call)

    def get_available_deployment(  # type: ignore[override]
        self, model: str, messages: list[dict[str, str]] | None = None,
        input: str | list[Any] | None = None, specific_deployment: bool | None = False,
        request_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # LiteLLM has no public synchronous "healthy deployments" call; this is the one its
        # own sync selector uses (cooldowns and blocked deployments filtered out).
        found = self._router._get_healthy_deployments(model, None)
        healthy = found[0] if isinstance(found, tuple) else found
        if isinstance(healthy, dict):
            return healthy  # a specific deployment was asked for
        call = Call(model, healthy, messages, input, request_kwargs)
        return choose_deployment_sync(self._picker, self._deployments, self.tracker, call)
