"""The registry feed: the primary process's fleet, mirrored into every other process.

Only the primary changes the fleet (admin API, discovery, health checks, engine scraping,
config reload). `StatePublisher` sends each follower a snapshot of every worker - spec, shared
in-flight column, health, draining, latest engine scrape - when the follower connects and
whenever the registry's version moved, checked every `period_secs`; `StateFollower` applies
each snapshot through the follower's own registry methods, so its routers, prefix index and
KV-event subscribers follow as they would in the primary. A follower is `synced` (and ready)
once it applied the first snapshot.

A snapshot is one JSON line over a Unix socket in the group's directory: fleets are small
(hundreds of workers, a few hundred bytes each), changes are rare, and a whole snapshot needs
no ordering or replay logic. Circuit breakers and response statistics stay per process: each
process learns from the requests it routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import msgspec

from picker.load_signals import EngineLoad
from picker.registry import Worker, WorkerRegistry
from picker.workers import WorkerSpec

__all__ = ["StateFollower", "StatePublisher"]

log = logging.getLogger("llm_picker.processes")

_PERIOD_SECS = 0.01
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


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[WorkerState])


def _snapshot(registry: WorkerRegistry) -> bytes:
    states = [WorkerState(w.spec.model_dump(mode="json"), w.column, w.healthy, w.draining,
                          w.engine) for w in registry.workers()]
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
        sent = self._registry.version
        while True:
            await asyncio.sleep(self._period)
            version = self._registry.version
            if version == sent:
                continue
            sent = version  # followers connecting later get a snapshot of their own
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
        self._specs: dict[str, dict[str, Any]] = {}  # url -> the spec last applied, as sent
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
                    self.apply(_decoder.decode(line))
            except (ConnectionError, msgspec.DecodeError) as exc:
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
            if state is None or state.column != worker.column:
                registry.remove(worker.url)
                self._specs.pop(worker.url, None)
        for url, state in wanted.items():
            known = registry.get_by_url(url)
            if known is None:
                worker = registry.add(WorkerSpec.model_validate(state.spec), state.column)
            else:
                worker = known
                if self._specs.get(url) != state.spec:
                    registry.replace_spec(worker, WorkerSpec.model_validate(state.spec))
            self._specs[url] = state.spec
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
