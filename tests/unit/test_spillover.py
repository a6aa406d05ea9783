"""Spill-over (WorkerSpec.overflow) through the routing service: overflow workers take a
model's requests only while every regular worker serving it is at limits.per_worker_max, and
routing returns to the regular workers as their load falls."""

from __future__ import annotations

import pytest

from picker.config import PickerConfig
from picker.errors import Overloaded
from picker.routing.leases import Lease
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.router import SPILLOVER
from picker.runtime import PickerRuntime


def runtime(*overflow_models: str, cap: int = 2) -> PickerRuntime:
    workers: list[dict[str, object]] = [
        {"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]} for i in range(2)]
    workers += [{"url": f"10.0.9.{i}:443", "id": f"x{i}", "models": [model], "overflow": True}
                for i, model in enumerate(overflow_models)]
    return PickerRuntime(PickerConfig.model_validate({
        "workers": workers, "policy": {"name": "least_load"}, "explain": {"enabled": True},
        "limits": {"per_worker_max": cap}}))


def request(model: str = "m") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT, prompt_text="hi")


def test_a_saturated_pool_spills_and_returns_when_load_falls() -> None:
    picker = runtime("m")
    held = [picker.routing.route_sync(request()) for _ in range(4)]
    assert sorted(lease.worker.id for lease in held) == ["w0", "w0", "w1", "w1"]
    spilled = [picker.routing.route_sync(request()) for _ in range(3)]
    assert {lease.worker.id for lease in spilled} == {"x0"}  # not held to the cap
    assert {lease.choice.policy for lease in spilled} == {SPILLOVER}
    assert picker.metrics.spillovers.labels("m", "x0")._value.get() == 3
    assert spilled[0].choice.decision is not None
    excluded = dict(spilled[0].choice.decision.excluded())
    assert excluded == {"w0": "cap_reached", "w1": "cap_reached"}
    held.pop().release(Outcome.COMPLETED)
    back = picker.routing.route_sync(request())
    assert back.worker.id in ("w0", "w1") and back.choice.policy == "least_load"


def test_overflow_workers_stay_idle_while_the_pool_has_room() -> None:
    picker = runtime("m", cap=100)
    leases: list[Lease] = [picker.routing.route_sync(request()) for _ in range(50)]
    assert {lease.worker.id for lease in leases} == {"w0", "w1"}
    decision = leases[0].choice.decision
    assert decision is not None and dict(decision.excluded())["x0"] == "overflow"
    # Nor are they a fallback of a regular worker (the proxy would retry the pool's request
    # on the overflow endpoint, whose key differs anyway).
    assert all(w.id != "x0" for w in picker.routers.default.fallbacks(
        request(), leases[0].worker, 5))


def test_without_an_overflow_worker_for_the_model_a_saturated_pool_is_a_429() -> None:
    picker = runtime("other-model")
    for _ in range(4):
        picker.routing.route_sync(request())
    with pytest.raises(Overloaded):
        picker.routing.route_sync(request())


def test_a_model_only_overflow_workers_serve_is_routed_to_them() -> None:
    lease = runtime("solo").routing.route_sync(request("solo"))
    assert lease.worker.id == "x0" and lease.choice.policy == "least_load"
