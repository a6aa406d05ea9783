"""Follow the configuration file: on SIGHUP or when it changes, apply its `workers:` list.

The file owns the workers it declares (WorkerManager.declare: the admin API cannot change them,
and workers the API added are left alone). They go through the API's path: discovery,
data-parallel ranks, drain on removal or replacement. A file that fails validation is rejected
with its error logged, and the running configuration keeps serving; so is an empty one (what a
file being rewritten in place holds for a moment: `sed ... > file` truncates first), and a
changed file is read only once it has not changed for `_SETTLE_SECS`. Other settings (ports,
policy) take effect on restart; a change to them is logged as such rather than half-applied.
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

from picker.config import PickerConfig, config_from_data, read_config_file
from picker.errors import ConfigError
from picker.fleet.manager import WorkerManager
from picker.observe.metrics import PickerMetrics

__all__ = ["ConfigReloader"]

log = logging.getLogger("llm_picker.reload")

_SETTLE_SECS = 0.2


class ConfigReloader:
    def __init__(self, path: Path, overrides: Mapping[str, Any], current: PickerConfig,
                 manager: WorkerManager, metrics: PickerMetrics, poll_secs: float = 1.0,
                 drain_timeout_secs: float = 30.0) -> None:
        self._path = path
        self._owner = str(path.resolve())  # what the admin API's refusals name
        self._overrides = overrides
        self._workers = current.workers  # claimed at start()
        # What the running picker uses: a reload compares against it, not the previous file,
        # so a setting changed twice (or changed and reverted) is reported truthfully.
        self._running = current.model_dump(exclude={"workers"})
        self._manager = manager
        self._poll_secs = poll_secs
        self._drain_timeout = drain_timeout_secs
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._metrics = metrics

    async def start(self) -> None:
        """Claim the file's workers (already registered at start-up), then follow the file."""
        await self._manager.declare(self._owner, self._workers, self._drain_timeout)
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
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set (CPython bpo-42130) and this loop would outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_secs):
                    await self._wake.wait()
            signalled = self._wake.is_set()
            self._wake.clear()
            mtime = self._mtime()
            if not signalled and mtime == seen:
                continue
            if not signalled:
                await asyncio.sleep(_SETTLE_SECS)
                if self._mtime() != mtime:
                    continue  # still being written: read it once it settles
            seen = mtime
            await self.reload()

    async def reload(self) -> None:
        try:
            data = read_config_file(self._path)  # read once: the check and the load agree
            if not data:
                raise ConfigError("config", f"{self._path} holds no settings (rewritten in "
                                  "place, or truncated); to remove every worker, write "
                                  "`workers: []`")
            new = config_from_data(data, os.environ, self._overrides)
        except ConfigError as exc:
            self._metrics.config_reloads.labels("rejected").inc()
            log.error("configuration reload rejected, previous configuration kept: %s", exc)
            return
        changed = sorted(key for key, value in new.model_dump(exclude={"workers"}).items()
                         if self._running.get(key) != value)
        if changed:
            log.warning("%s: changes to %s apply on restart (workers apply now)", self._path,
                        ", ".join(changed))
        refused = await self._manager.declare(self._owner, new.workers, self._drain_timeout)
        # Counted once the workers are applied, so a watcher of the metric sees the new fleet.
        self._metrics.config_reloads.labels("applied").inc()
        if refused:
            log.warning("configuration reloaded from %s: %d of its %d workers applied, %d not "
                        "(logged above; retried at the next reload)", self._path,
                        len(new.workers) - refused, len(new.workers), refused)
        else:
            log.info("configuration reloaded from %s: %d workers from the file",
                     self._path, len(new.workers))
