"""Active health checks against a real HTTP endpoint whose answer the test controls."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import pytest

from picker.fleet.health import HealthChecker, HealthSettings
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from tests.http_stub import StubServer
from tests.waiting import eventually


@pytest.fixture
def endpoint() -> Iterator[StubServer]:
    stub = StubServer()  # every path answers `stub.status`
    yield stub
    stub.close()


wait_for = functools.partial(eventually, timeout=3.0)


FAST = HealthSettings(interval_secs=0.02, timeout_secs=0.5, failure_threshold=2,
                      success_threshold=2)


async def test_ejects_after_threshold_and_readmits(endpoint: StubServer) -> None:
    registry = WorkerRegistry([WorkerSpec(url=endpoint.url, api_key="sk-x")])
    worker = registry.workers()[0]
    checker = HealthChecker(registry, FAST)
    await checker.start()
    try:
        await wait_for(lambda: len(endpoint.auth) >= 2)
        assert worker.healthy
        endpoint.status = 503
        await wait_for(lambda: not worker.healthy)
        endpoint.status = 200
        await wait_for(lambda: worker.healthy)
    finally:
        await checker.stop()
    assert endpoint.auth[0] == "Bearer sk-x"


async def test_unreachable_worker_is_ejected() -> None:
    registry = WorkerRegistry([WorkerSpec(url="http://127.0.0.1:1")])
    checker = HealthChecker(registry, FAST)
    await checker.start()
    try:
        await wait_for(lambda: not registry.workers()[0].healthy)
    finally:
        await checker.stop()


async def test_per_worker_override_disables_checks(endpoint: StubServer) -> None:
    endpoint.status = 500
    registry = WorkerRegistry([WorkerSpec(url=endpoint.url, health={"disable": True})])
    checker = HealthChecker(registry, FAST)
    await checker.start()
    await asyncio.sleep(0.2)
    await checker.stop()
    assert endpoint.auth == [] and registry.workers()[0].healthy


async def test_follows_workers_added_and_removed_later(endpoint: StubServer) -> None:
    registry = WorkerRegistry()
    checker = HealthChecker(registry, FAST)
    await checker.start()
    try:
        endpoint.status = 500
        worker = registry.add(WorkerSpec(url=endpoint.url))
        await wait_for(lambda: not worker.healthy)
        registry.remove(worker.url)
        seen = len(endpoint.auth)
        await asyncio.sleep(0.15)
        assert len(endpoint.auth) <= seen + 1  # at most the probe already in flight
    finally:
        await checker.stop()
