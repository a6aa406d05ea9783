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

from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_http import WorkerRequests
from picker.fleet.worker_spec import WorkerSpec

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
async def test_hanging_dead_workers_delay_neither_a_new_worker_nor_a_single_miss(
        requests: WorkerRequests) -> None:
    """Dead workers that hang until the deadline fill the failing lane; a new worker's first
    request and a live worker's request after one miss do not queue behind them (review
    finding: both waited about dead workers / slots x deadline)."""
    silent = [await _serve(_silent) for _ in range(10)]  # five times a lane's slots
    registry = WorkerRegistry([WorkerSpec(url=url) for _, url in silent])
    stuck = registry.workers()
    first = [asyncio.create_task(requests.get(w, "/health", deadline=0.2)) for w in stuck]
    await asyncio.gather(*first)  # each missed once: now in the failing lane
    waiting = [asyncio.create_task(requests.get(w, "/health", deadline=3.0)) for w in stuck]
    await asyncio.sleep(0.1)
    ok, ok_url = await _serve(_ok)
    new = registry.add(WorkerSpec(url=ok_url))
    started = time.monotonic()
    assert await requests.get(new, "/health", deadline=1.0) is not None  # its first request
    assert time.monotonic() - started < 0.5
    flaky, flaky_url = await _serve(_silent)
    missed = registry.add(WorkerSpec(url=flaky_url))
    requests._answered.add(missed.url)  # noqa: SLF001 - it answered before, then missed once
    assert await requests.get(missed, "/health", deadline=0.2) is None
    started = time.monotonic()
    assert await requests.get(missed, "/health", deadline=0.2) is None  # its own deadline,
    assert time.monotonic() - started < 0.5  # not a wait behind the hanging ones
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for server in (ok, flaky, *(server for server, _ in silent)):
        server.close()


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


async def test_a_pool_that_lost_its_slots_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort: a PoolTimeout (impossible with a pool larger than both lanes, unless
    slots were lost) gives the next requests a new client. A proxy in the environment keeps
    plain http workers' requests on httpx (which honours it, and NO_PROXY)."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    requests = WorkerRequests(concurrency=2)
    requests.start()
    server, url = await _serve(_ok)
    worker = WorkerRegistry([WorkerSpec(url=url)]).workers()[0]

    def no_slot(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection slot", request=request)

    requests._client = httpx.AsyncClient(transport=httpx.MockTransport(no_slot))
    assert await requests.get(worker, "/health", deadline=1.0) is None
    assert await requests.get(worker, "/health", deadline=1.0) is not None
    await requests.stop()
    server.close()


async def test_plain_http_workers_get_their_key_on_one_kept_connection(
        requests: WorkerRequests) -> None:
    """Plain http workers go through picker.fleet.plain_get: the API key is sent, the connection is
    kept between requests, and a removed worker's connection is closed."""
    heads: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []
    ended = asyncio.Event()

    @_quiet
    async def keyed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while head := await reader.read(65536):
            heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        ended.set()

    server, url = await _serve(keyed)
    worker = WorkerRegistry([WorkerSpec(url=url, api_key="k-30")]).workers()[0]
    for _ in range(2):
        answer = await requests.get(worker, "/health", deadline=1.0)
        assert answer is not None and answer.is_success
    assert len(heads) == 2 and all(b"\r\nauthorization: Bearer k-30\r\n" in h for h in heads)
    assert len(connections) == 1 and not ended.is_set()
    requests.forget(worker)
    await asyncio.wait_for(ended.wait(), 2)
    server.close()


async def test_a_request_whose_worker_loop_ended_keeps_no_connection(
        requests: WorkerRequests) -> None:
    """A worker removed mid-request: the request runs to its end (shielded), and its
    connection is closed after rather than kept for a worker that is gone."""
    ended = asyncio.Event()

    @_quiet
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()
        ended.set()

    server, url = await _serve(slow)
    worker = WorkerRegistry([WorkerSpec(url=url)]).workers()[0]
    probe = asyncio.create_task(requests.get(worker, "/health", deadline=1.0))
    await asyncio.sleep(0.05)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    await asyncio.wait_for(ended.wait(), 2)
    server.close()
