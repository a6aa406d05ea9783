"""Follow the configuration file: on SIGHUP or when it changes, apply its `workers:` list.

Only workers that came from the file are managed here (ones added through the admin API are
left alone). Added workers are registered, removed ones drained, changed ones updated in place.
A file that fails validation is rejected with its error logged, and the running configuration
keeps serving. Other settings (ports, policy) take effect on restart; a change to them is
logged as such rather than half-applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from picker.config import PickerConfig, load_config
from picker.errors import ConfigError, PickerError
from picker.fleet import WorkerManager
from picker.telemetry import PickerMetrics
from picker.workers import WorkerSpec

__all__ = ["ConfigReloader"]

log = logging.getLogger("llm_picker.reload")


class ConfigReloader:
    def __init__(self, path: Path, overrides: Mapping[str, Any], current: PickerConfig,
                 manager: WorkerManager, metrics: PickerMetrics, poll_secs: float = 1.0,
                 drain_timeout_secs: float = 30.0) -> None:
        self._path = path
        self._overrides = overrides
        self._current = current
        self._manager = manager
        self._poll_secs = poll_secs
        self._drain_timeout = drain_timeout_secs
        self._managed = {spec.url: spec for spec in current.workers}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._metrics = metrics

    async def start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._wake.set)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _mtime(self) -> float | None:
        try:
            return self._path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    async def _follow(self) -> None:
        seen = self._mtime()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_secs)
            signalled = self._wake.is_set()
            self._wake.clear()
            mtime = self._mtime()
            if signalled or mtime != seen:
                seen = mtime
                await self.reload()

    async def reload(self) -> None:
        try:
            new = load_config(self._path, env=os.environ, overrides=self._overrides)
        except ConfigError as exc:
            self._metrics.config_reloads.labels("rejected").inc()
            log.error("configuration reload rejected, previous configuration kept: %s", exc)
            return
        self._metrics.config_reloads.labels("applied").inc()
        if new.model_dump(exclude={"workers"}) != self._current.model_dump(exclude={"workers"}):
            log.warning("settings other than workers changed in %s; they apply on restart",
                        self._path)
        await self._apply({spec.url: spec for spec in new.workers})
        self._current = new

    async def _apply(self, wanted: dict[str, WorkerSpec]) -> None:
        registry = self._manager.workers
        drains = []
        for url in self._managed.keys() - wanted.keys():
            worker = registry.get_by_url(url)
            if worker is not None:
                drains.append(self._manager.drain(worker, self._drain_timeout))
        for url, spec in wanted.items():
            worker = registry.get_by_url(url)
            try:
                if worker is None:
                    registry.add(spec)
                elif url in self._managed and spec != worker.spec:
                    if spec.id == worker.id:
                        registry.replace_spec(worker, spec)
                    else:
                        registry.remove(url)
                        registry.add(spec)
            except PickerError as exc:
                log.error("worker %s from %s not applied: %s", url, self._path, exc)
                continue
        self._managed = wanted
        log.warning("configuration reloaded from %s: %d workers from the file",
                    self._path, len(wanted))
        # Drains run after the new set is live; they finish in the background.
        for drain in drains:
            asyncio.create_task(drain)
