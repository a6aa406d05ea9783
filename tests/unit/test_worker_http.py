"""WorkerRequests against real loopback servers: a whole-request deadline, lanes that keep
workers which do not answer from delaying workers that do, and a pool no cancellation can
wedge."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from picker.registry import WorkerRegistry
from picker.worker_http import WorkerRequests
from picker.workers import WorkerSpec

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _quiet(handler: Handler) -> Handler:
    """A test server's connection ending (the client gone, the loop closing) is no error."""
    @functools.wraps(handler)
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
            await handler(reader, writer)
    return run


@_quiet
async def _dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers headers, then one body byte every 50 ms for ever: each read is quick, so
    only a deadline over the whole request ends it."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
    while True:
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)


@_quiet
async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


@_quiet
async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def requests() -> AsyncIterator[WorkerRequests]:
    sender = WorkerRequests(concurrency=2)
    sender.start()
    yield sender
    await sender.stop()


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_deadline_covers_the_whole_request(requests: WorkerRequests) -> None:
    server, url = await _serve(_dribble)
    worker = WorkerRegistry([WorkerSpec(url=url)]).workers()[0]
    started = time.monotonic()
    # The outer bound only turns a hang into a failure; the deadline must end it far sooner.
    assert await asyncio.wait_for(requests.get(worker, "/health", deadline=0.3), 5) is None
    assert time.monotonic() - started < 1.0
    server.close()


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_workers_that_do_not_answer_never_delay_one_that_does(
        requests: WorkerRequests) -> None:
    ok, ok_url = await _serve(_ok)
    registry = WorkerRegistry([WorkerSpec(url=ok_url)])
    live = registry.workers()[0]
    assert await requests.get(live, "/health", deadline=1.0) is not None  # answered once
    # Ten silent workers (five times the lane's slots) each hold a slot for the deadline.
    silent = [await _serve(_silent) for _ in range(10)]
    stuck = [registry.add(WorkerSpec(url=url)) for _, url in silent]
    waiting = [asyncio.create_task(requests.get(w, "/health", deadline=2.0)) for w in stuck]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await requests.get(live, "/health", deadline=1.0) is not None
    assert time.monotonic() - started < 0.5
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for server, _ in silent:
        server.close()
    ok.close()


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_requests_cancelled_mid_flight_never_wedge_the_pool(
        requests: WorkerRequests) -> None:
    """Workers deleted while probed: their loops are cancelled at every point of a request.
    httpcore orphans a connection cancelled between being handed out and sent on; four such
    filled this pool (2 lanes x 2) before requests were shielded from their callers."""
    servers = [await _serve(_ok) for _ in range(20)]
    workers = WorkerRegistry([WorkerSpec(url=url) for _, url in servers]).workers()
    steps = random.Random(30)
    for _ in range(300):
        probes = [asyncio.create_task(requests.get(w, "/health", deadline=1.0)) for w in workers]
        for _ in range(steps.randrange(1, 12)):
            await asyncio.sleep(0)
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
    started = time.monotonic()
    assert await requests.get(workers[0], "/health", deadline=1.0) is not None
    assert time.monotonic() - started < 0.5
    for server, _ in servers:
        server.close()


async def test_a_pool_that_lost_its_slots_is_replaced(requests: WorkerRequests) -> None:
    """The last resort: a PoolTimeout (impossible with a pool larger than both lanes, unless
    slots were lost) gives the next requests a new client."""
    server, url = await _serve(_ok)
    worker = WorkerRegistry([WorkerSpec(url=url)]).workers()[0]

    def no_slot(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection slot", request=request)

    requests._client = httpx.AsyncClient(transport=httpx.MockTransport(no_slot))
    assert await requests.get(worker, "/health", deadline=1.0) is None
    assert await requests.get(worker, "/health", deadline=1.0) is not None
    server.close()
