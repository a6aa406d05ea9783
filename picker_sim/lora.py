"""LoRA adapters on the simulated engine, served the way vLLM 0.33 serves them.

Facts taken from vLLM 0.33.0 (the wheel's sources):
- Adapters are registered by name and path (`--lora-modules`, or at runtime
  `POST /v1/load_lora_adapter` when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set:
  vllm/entrypoints/serve/lora/api_router.py:30-32,63-96). /v1/models lists each one with
  `root` = its path and `parent` = its base model (vllm/entrypoints/openai/models/serving.py:
  149-165). A request naming an adapter that is not registered is answered 404 "The model `x`
  does not exist." (vllm/entrypoints/serve/engine/serving.py:75-84).
- The load and unload checks, in order, and their answers (serving.py:250-301): a missing
  name or path is 400 InvalidUserInput; a name equal to the base model 400; a name already
  loaded 400 unless `load_inplace`; an adapter the engine cannot read 404 NotFoundError
  (serving.py:196-208, vllm/exceptions.py:71-93); unloading an unknown name 404 NotFoundError.
  Success is 200 with a plain-text body "Success: LoRA adapter 'x' added successfully." /
  "... removed successfully." (serving.py:232,248; api_router.py:74,96).
- At most `max_loras` distinct adapters are in one batch: the scheduler skips a waiting request
  whose adapter would be one more (vllm/v1/core/sched/scheduler.py:1091-1101), and a GPU slot
  is an LRU cache of `max_loras` adapters; activating one not in it evicts the oldest
  (vllm/lora/model_manager.py:1441-1452) and costs copying its weights in (the load cost here).
- `vllm:lora_requests_info` exists only with LoRA enabled; labels `max_lora`,
  `waiting_lora_adapters`, `running_lora_adapters` (vllm/v1/metrics/loggers.py:1093-1111).
  Each label is the comma-joined names of the adapters with a request on the engine: 0.33
  keeps one entry per adapter that has any request and fills both dicts for each
  (vllm/v1/metrics/stats.py:646-704), so an adapter whose requests all wait is in
  `running_lora_adapters` too. Each combination is its own series, set to the time it was
  current (`set_to_current_time`, loggers.py:1224-1236), and old series are never removed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple

__all__ = ["LoraRefusal", "SimLoras"]

# Label combinations kept in the info gauge: vLLM keeps every one it ever set; a sim running
# for days under a benchmark must not grow without bound, and readers want the newest only.
_SERIES_KEPT = 64


class LoraRefusal(NamedTuple):
    """A load or unload the engine refuses: vLLM's status, error type and message."""

    status: int
    error_type: str
    message: str


class SimLoras:
    """Registered adapters, GPU slots and per-adapter request counts of one engine."""

    def __init__(self, base_model: str, max_loras: int, load_ms: float,
                 adapters: Mapping[str, str]) -> None:
        self._base = base_model
        self.max_loras = max_loras
        self._load_secs = load_ms / 1000
        self.registered: dict[str, str] = dict(adapters)  # name -> path, load order
        self._slots: OrderedDict[str, None] = OrderedDict()  # GPU slots, least recent first
        self._running: dict[str, int] = {}  # adapter -> requests in the batch
        self._waiting: dict[str, int] = {}  # adapter -> requests waiting for a slot
        self._order: dict[str, None] = {}  # adapters with a request, in first-seen order
        self._changed = asyncio.Condition()
        self._activating: dict[str, asyncio.Lock] = {}
        self.loads = 0  # adapters copied into a GPU slot (each paid the load cost)
        self._series: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- the load / unload API ----------------------------------------------------------------

    def load(self, name: object, path: object, inplace: object = False) -> LoraRefusal | None:
        """Register an adapter; None on success, else what vLLM answers."""
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return LoraRefusal(400, "InvalidUserInput",
                               "Both 'lora_name' and 'lora_path' must be provided.")
        if name == self._base:
            return LoraRefusal(400, "InvalidUserInput",
                               f"The lora adapter '{name}' conflicts with a served base model.")
        if inplace is not True and name in self.registered:
            return LoraRefusal(400, "InvalidUserInput",
                               f"The lora adapter '{name}' has already been loaded. If you "
                               "want to load the adapter in place, set 'load_inplace' to True.")
        if path.startswith("/missing"):  # the sim's stand-in for a path with no adapter
            return LoraRefusal(404, "NotFoundError",
                               f"Loading lora {name} failed: No adapter found for {path}")
        self.registered[name] = path
        self._slots.pop(name, None)  # reloaded weights are copied in again on next use
        return None

    def unload(self, name: object) -> LoraRefusal | None:
        if not isinstance(name, str) or not name:
            return LoraRefusal(400, "InvalidUserInput",
                               "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.registered:
            return LoraRefusal(404, "NotFoundError",
                               f"The lora adapter '{name}' cannot be found.")
        del self.registered[name]
        if not self._running.get(name):
            self._slots.pop(name, None)
        return None

    # -- serving ------------------------------------------------------------------------------

    @asynccontextmanager
    async def serving(self, name: str) -> AsyncIterator[None]:
        """Hold a place in the batch for a request on adapter `name`: wait while `max_loras`
        other adapters are in it, copy the adapter into a GPU slot if it is not in one."""
        self._order.setdefault(name, None)
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: name in self._running
                                             or len(self._running) < self.max_loras)
                self._running[name] = self._running.get(name, 0) + 1
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
        try:
            await self._activate(name)
            yield
        finally:
            self._running[name] -= 1
            if not self._running[name]:
                del self._running[name]
            if name not in self._running and name not in self._waiting:
                self._order.pop(name, None)
            async with self._changed:
                self._changed.notify_all()

    async def _activate(self, name: str) -> None:
        lock = self._activating.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._slots:
                self._slots.move_to_end(name)
                return
            while len(self._slots) >= self.max_loras:
                idle = next((a for a in self._slots if a not in self._running), None)
                if idle is None:
                    break
                del self._slots[idle]
            self.loads += 1
            await asyncio.sleep(self._load_secs)
            self._slots[name] = None

    # -- what the engine reports --------------------------------------------------------------

    def info_series(self) -> list[tuple[tuple[str, str, str], float]]:
        """The `vllm:lora_requests_info` series: ((max_lora, waiting, running), value), the
        current combination set to now."""
        names = ",".join(self._order)
        key = (names, names)
        self._series.pop(key, None)
        self._series[key] = time.time()
        while len(self._series) > _SERIES_KEPT:
            self._series.popitem(last=False)
        return [((str(self.max_loras), waiting, running), at)
                for (waiting, running), at in self._series.items()]

    def model_cards(self) -> list[dict[str, object]]:
        """The adapters as /v1/models lists them."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "vllm",
                 "root": path, "parent": self._base} for name, path in self.registered.items()]
