"""Admin API and the picker's own metrics, through the ASGI app."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from picker.admin import create_admin_app
from picker.policies import create_policy
from picker.registry import WorkerRegistry
from picker.router import Router
from picker.telemetry import PickerMetrics
from picker.workers import WorkerSpec


def make(*specs: WorkerSpec) -> Router:
    registry = WorkerRegistry(specs)
    return Router(registry, create_policy("round_robin"), PickerMetrics(registry))


async def get(router: Router, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_admin_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path)


async def test_health_is_liveness_only() -> None:
    response = await get(make(), "/health")
    assert response.status_code == 200 and response.json() == {"status": "healthy"}


async def test_ready_needs_a_routable_worker() -> None:
    router = make(WorkerSpec(url="a:1", models=["m"]))
    assert (await get(router, "/ready")).status_code == 200
    router.workers.workers()[0].healthy = False
    response = await get(router, "/ready")
    assert response.status_code == 503 and response.json()["routable_workers"] == 0
    assert (await get(make(), "/ready")).status_code == 503


async def test_metrics_are_prometheus_text_with_live_worker_state() -> None:
    router = make(WorkerSpec(url="a:1", id="a", models=["m"]), WorkerSpec(url="b:1", id="b"))
    router.workers.acquire(router.workers.get("a"))  # type: ignore[arg-type]
    router.workers.workers()[1].healthy = False
    response = await get(router, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("llm_picker_worker_in_flight", (("worker", "a"),))] == 1
    assert samples[("llm_picker_worker_healthy", (("worker", "b"),))] == 0
    assert ("llm_picker_decision_duration_seconds_count", ()) in samples
