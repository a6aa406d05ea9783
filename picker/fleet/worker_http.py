"""WorkerRequests: the GETs health checks and metrics scraping send to every worker.

Thousands of workers share one HTTP client, so four things are kept bounded here, once:

- **Concurrency below the pool.** At most `concurrency` requests per lane are in flight and the
  connection pool holds more connections than all lanes together, so the pool never queues.
  A queue in httpcore's pool is what failed with ~500 unreachable workers: its bookkeeping is
  O(queued x connections) on every request (100% CPU), and a request cancelled or timed out
  while queued leaves a connection stuck CONNECTING that holds a pool slot for good
  (encode/httpcore#1093, httpcore 1.0.9), until no probe reached any worker.
- **A deadline per request**, from the moment it has a slot to the end of its body
  (asyncio.timeout): httpx's own timeouts are per phase, and a worker dribbling bytes would
  otherwise hold a slot for ever.
- **Three lanes.** A worker that has answered stays in the answering lane until it misses two
  requests in a row (one miss, a slow moment, does not demote it: that is when its ejection is
  decided); a new worker's first request has a lane of its own; every other worker (never
  answered, or missed twice) waits in the failing lane, where dead workers that hang until the
  deadline hold their slots. So dead workers, however many and however slow, never delay a
  worker that answers, nor the first request of a new one; one answer moves a worker back.
- **No request cut short by its caller.** httpcore also orphans a connection, for good, when a
  request is cancelled after the pool handed it a new connection and before it sent on it
  (#1093, #986): deleting workers mid-probe filled a pool that way. A request runs to its end
  (within its deadline) even when its worker's loop is cancelled; and should the pool still
  lose its slots (a PoolTimeout, impossible otherwise), a new client takes over.

Plain `http://` workers are sent their GETs by picker.fleet.plain_get instead, over a connection
kept per worker: 0.11 ms of CPU per request where httpx costs 1.2 ms, which is what holds
2,000 workers at their 1 s period (docs/benchmarks.md, health checks at scale). The lanes,
the deadline and the shield above hold for both.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import urllib.request

import httpx

from picker.fleet.plain_get import Answer, PlainGetter
from picker.fleet.registry import Worker
from picker.fleet.worker_tls import worker_tls

__all__ = ["WorkerRequests"]

log = logging.getLogger("llm_picker.worker_http")

# Idle connections kept for reuse. Few: httpcore 1.0.9 walks every pooled connection once per
# pooled connection on each request (connection_pool.py:292-296 counts all connections where
# it means idle ones), and a fleet of hundreds needs a new connection per probe anyway.
# Measured, 300 live workers probed each second: 0.80 ms of CPU per probe keeping none, 0.83
# keeping 8, 0.96 keeping 20 (httpx's default), 1.19 keeping 32.
_KEEPALIVE = 8
# Health answers are a few bytes, but a vLLM /metrics page with histograms and LoRA adapters
# runs to hundreds of KiB: a bound on memory, far above either.
_BODY_LIMIT = 8 * 1024 * 1024
# Misses in a row that move an answering worker to the failing lane: the health checker's
# default failure_threshold, so a worker is demoted when it is ejected, not before.
_MISSES_TO_DEMOTE = 2


class _Lane(enum.Enum):
    ANSWERING = "answering"
    NEW = "new"
    FAILING = "failing"


class WorkerRequests:
    """Started and stopped on the loop that sends the requests (no I/O in __init__)."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._client: httpx.AsyncClient | None = None
        self._plain: PlainGetter | None = None
        self._lanes: dict[_Lane, asyncio.Semaphore] = {}
        self._answered: set[str] = set()  # worker urls that have answered a request
        self._misses: dict[str, int] = {}  # worker url -> requests missed in a row
        self._running: set[asyncio.Task[Answer | None]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._lanes = {lane: asyncio.Semaphore(self._concurrency) for lane in _Lane}
        self._client = self._new_client()
        # httpx sends through a proxy set in the environment (trust_env); requests that must
        # keep doing so stay with it.
        proxies = urllib.request.getproxies()
        if "http" not in proxies and "all" not in proxies:
            self._plain = PlainGetter(_BODY_LIMIT)

    def _new_client(self) -> httpx.AsyncClient:
        # Every request in flight holds a lane slot, so the pool always has a connection to
        # hand out at once: reused, new, or made by closing an idle one.
        slots = len(_Lane) * self._concurrency
        return httpx.AsyncClient(
            verify=worker_tls(),
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=_KEEPALIVE))

    async def stop(self) -> None:
        tasks = [*self._running, *self._closing]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._plain is not None:
            self._plain.close()
        if self._client is not None:
            await self._client.aclose()

    def forget(self, worker: Worker) -> None:
        """A worker removed: a new one at its url starts as unproven, on a new connection."""
        self._answered.discard(worker.url)
        self._misses.pop(worker.url, None)
        if self._plain is not None:
            self._plain.forget(worker.spec.network_url)

    async def get(self, worker: Worker, path: str, deadline: float) -> Answer | None:
        """GET `path` on `worker` (with its API key), read whole within `deadline` seconds
        of taking a slot; None when the worker could not be reached or did not answer in
        time. The wait for a slot is not counted: it is not the worker's fault."""
        lane = self._lanes[self._lane_of(worker.url)]
        await lane.acquire()  # cancelled while waiting here: nothing was sent
        request = asyncio.create_task(self._send(worker, path, deadline))
        request.add_done_callback(lambda _: lane.release())
        self._running.add(request)
        request.add_done_callback(self._running.discard)
        try:
            response = await asyncio.shield(request)  # cancelled now: the request ends itself
        except asyncio.CancelledError:
            # The worker's loop ended (it was removed): no connection is kept for it after.
            if self._plain is not None:
                plain, url = self._plain, worker.spec.network_url
                request.add_done_callback(lambda _: plain.forget(url))
            raise
        if response is None:
            self._misses[worker.url] = self._misses.get(worker.url, 0) + 1
        else:
            self._answered.add(worker.url)
            self._misses.pop(worker.url, None)
        return response

    def _lane_of(self, url: str) -> _Lane:
        misses = self._misses.get(url, 0)
        if url in self._answered:
            return _Lane.ANSWERING if misses < _MISSES_TO_DEMOTE else _Lane.FAILING
        return _Lane.NEW if misses == 0 else _Lane.FAILING

    async def _send(self, worker: Worker, path: str, deadline: float) -> Answer | None:
        assert self._client is not None, "WorkerRequests.start() was not called"
        headers = {}
        if worker.spec.api_key is not None:
            headers["authorization"] = f"Bearer {worker.spec.api_key.get_secret_value()}"
        url = worker.spec.network_url
        if self._plain is not None and self._plain.sendable(url, path, headers):
            return await self._plain.get(url, path, headers, deadline)
        client = self._client
        try:
            async with asyncio.timeout(deadline):
                response = await client.get(url + path, headers=headers, timeout=deadline)
                return Answer(response.status_code, response.content)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("GET %s of worker %s: %s", path, worker.id, type(exc).__name__)
            if isinstance(exc, httpx.PoolTimeout):
                self._renew(client, deadline)
            return None

    def _renew(self, broken: httpx.AsyncClient, deadline: float) -> None:
        """A new client for the next requests; the broken one is closed once the requests
        still on it are over (each within its deadline)."""
        if self._client is not broken:
            return  # renewed already
        log.warning("worker requests: the connection pool lost its slots; using a new one")
        self._client = self._new_client()

        async def close_later() -> None:
            await asyncio.sleep(deadline)
            await broken.aclose()

        closing = asyncio.create_task(close_later())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
