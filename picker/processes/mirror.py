"""The registry feed: the primary process's fleet, mirrored into every other process.

Only the primary changes the fleet (admin API, discovery, health checks, engine scraping,
config reload). `StatePublisher` sends each follower a snapshot of every worker - spec, shared
in-flight column, health, draining, latest engine scrape - when the follower connects and
whenever the registry's version moved, checked every `period_secs`; `StateFollower` applies
each snapshot through the follower's own registry methods, so its routers, prefix index and
KV-event subscribers follow as they would in the primary. A follower is `synced` (and ready)
once it applied the first snapshot. Engine scrapes alone are sent at most every 0.5 s.

A snapshot is one JSON line over a Unix socket in the group's directory: fleets are small
(hundreds of workers, a few hundred bytes each), changes are rare, and a whole snapshot needs
no ordering or replay logic. Circuit breakers and response statistics stay per process: each
process learns from the requests it routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import msgspec

from picker.errors import PickerError
from picker.fleet.engine_load import EngineLoad
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec

__all__ = ["StateFollower", "StatePublisher"]

log = logging.getLogger("llm_picker.processes")

_PERIOD_SECS = 0.01
# Engine scrapes alone (each worker's, once a second by default) are sent at most this often:
# a snapshot of a large fleet costs milliseconds to encode and to apply.
_LOAD_PERIOD_SECS = 0.5
# A follower whose socket holds this much unsent is not reading: it is dropped and reconnects.
_MAX_BUFFER_BYTES = 64 * 1024 * 1024
_LINE_LIMIT = 256 * 1024 * 1024
_RETRY_SECS = 0.05


class WorkerState(msgspec.Struct, frozen=True):
    spec: dict[str, Any]
    column: int
    healthy: bool
    draining: bool
    engine: EngineLoad | None
    # The spec's dump leaves the write-only key out; followers must send it to the engine.
    # (The socket lives in the group's own directory, which only this user can read.)
    api_key: str | None = None

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec.model_validate({**self.spec, "api_key": self.api_key})


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[WorkerState])


def _snapshot(registry: WorkerRegistry) -> bytes:
    states = [WorkerState(w.spec.model_dump(mode="json"), w.column, w.healthy, w.draining,
                          w.engine, None if w.spec.api_key is None
                          else w.spec.api_key.get_secret_value())
              for w in registry.workers()]
    return _encoder.encode(states) + b"\n"


class StatePublisher:
    def __init__(self, registry: WorkerRegistry, path: Path,
                 period_secs: float = _PERIOD_SECS) -> None:
        self._registry = registry
        self._path = path
        self._period = period_secs
        self._followers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._follow, str(self._path))
        self._task = asyncio.create_task(self._publish_forever(), name="registry feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for writer in self._followers:
            writer.close()
        self._followers.clear()

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_snapshot(self._registry))
        self._followers.add(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # followers never write: this returns when one goes away
        self._followers.discard(writer)
        writer.close()

    async def _publish_forever(self) -> None:
        registry = self._registry
        sent, loads_sent = registry.version, registry.load_version
        loads_due = 0.0
        while True:
            await asyncio.sleep(self._period)
            now = time.monotonic()
            fleet_moved = registry.version != sent
            loads_moved = registry.load_version != loads_sent and now >= loads_due
            if not (fleet_moved or loads_moved):
                continue
            # Followers connecting later get a snapshot of their own.
            sent, loads_sent = registry.version, registry.load_version
            loads_due = now + _LOAD_PERIOD_SECS
            line = _snapshot(self._registry)
            for writer in list(self._followers):
                if writer.transport.get_write_buffer_size() > _MAX_BUFFER_BYTES:
                    log.warning("a picker process stopped reading the registry feed; dropped")
                    self._followers.discard(writer)
                    writer.close()
                    continue
                writer.write(line)


class StateFollower:
    """Applies the primary's snapshots to this process's registry (a discovery source: the
    runtime's readiness waits for `synced`)."""

    def __init__(self, registry: WorkerRegistry, path: Path) -> None:
        self._registry = registry
        self._path = path
        # url -> the spec (and key) last applied, as sent
        self._specs: dict[str, tuple[dict[str, Any], str | None]] = {}
        self._synced = False
        self._task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow_forever(), name="registry mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow_forever(self) -> None:
        """Connect (the primary may still be starting), apply every snapshot; when the feed
        ends (the primary stopping, or gone: the supervisor then stops this process too),
        say so once and keep trying quietly, routing on the last fleet meanwhile."""
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._path),
                                                                    limit=_LINE_LIMIT)
            except (FileNotFoundError, ConnectionError):
                await asyncio.sleep(_RETRY_SECS)
                continue
            try:
                while line := await reader.readline():
                    try:
                        self.apply(_decoder.decode(line))
                    except (ValueError, PickerError) as exc:  # msgspec and pydantic errors too
                        # One snapshot this process cannot apply must not freeze its fleet:
                        # the next one (at the next change) is tried in full.
                        log.error("a registry snapshot from the primary process could not be "
                                  "applied: %s", exc)
            except ConnectionError as exc:
                log.error("registry feed from the primary process broke: %s", exc)
            finally:
                writer.close()
            log.warning("registry feed from the primary process ended; routing on the last "
                        "fleet it sent")
            await asyncio.sleep(_RETRY_SECS)

    def apply(self, states: list[WorkerState]) -> None:
        """Make the registry hold exactly `states` (removals first, so an id or url moving
        between workers never conflicts)."""
        registry = self._registry
        wanted = {state.spec["url"]: state for state in states}
        for worker in registry.workers():
            state = wanted.get(worker.url)
            # Another column or id, or a drained worker no longer draining: the primary
            # removed it and registered one anew at that url, maybe between two snapshots.
            if state is None or state.column != worker.column \
                    or worker.id != (state.spec.get("id") or worker.url) \
                    or (worker.draining and not state.draining):
                registry.remove(worker.url)
                self._specs.pop(worker.url, None)
        for url, state in wanted.items():
            known = registry.get_by_url(url)
            if known is None:
                worker = registry.add(state.worker_spec(), state.column)
            else:
                worker = known
                if self._specs.get(url) != (state.spec, state.api_key):
                    registry.replace_spec(worker, state.worker_spec())
            self._specs[url] = (state.spec, state.api_key)
            self._apply_live(worker, state)
        self._synced = True

    def _apply_live(self, worker: Worker, state: WorkerState) -> None:
        registry = self._registry
        registry.set_healthy(worker, state.healthy)
        if state.draining and not worker.draining:
            registry.set_draining(worker)
        engine = state.engine
        if engine is not None and (worker.engine is None
                                   or worker.engine.scraped_at != engine.scraped_at):
            registry.set_engine_load(worker, engine)
