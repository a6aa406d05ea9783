"""On-demand LoRA loading: when no engine serves a declared adapter, load it on one engine of
its base model through vLLM's `/v1/load_lora_adapter`, then route there.

Off unless `lora.load_on_demand`. Bounded: one load per adapter at a time (requests arriving
meanwhile wait for that load, they do not start their own), at most `max_loads_in_flight`
loads at once, each within `load_timeout_secs`, on at most `max_attempts` engines. The engine
is the readiest by LoRA affinity (picker.policies.lora_scores: a free adapter place before a
full engine), then the least loaded.

vLLM's answers (vllm/entrypoints/openai/models/serving.py:167-280, the endpoint only with
VLLM_ALLOW_RUNTIME_LORA_UPDATING, vllm/entrypoints/serve/lora/api_router.py:30-32): 200 is
loaded; 400 "has already been loaded" means the engine has it (another picker, or a restart of
this one, loaded it): taken as loaded; any other answer (400 bad input, 404 no adapter at that
path or no such endpoint, 500) or no answer is a refusal, and the next engine is tried. When
every attempt is refused the request fails 503 (AdapterLoadFailed) naming the last refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import httpx
from pydantic import Field

from picker.errors import AdapterLoadFailed
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import Name, WorkerSpec
from picker.fleet.worker_tls import worker_tls
from picker.policies.least_load import load_key
from picker.policies.lora_scores import FREE_PLACE, place_score
from picker.routing.request import RoutingRequest
from picker.strict import StrictModel

__all__ = ["AdapterLoader", "DeclaredAdapter", "LoraSettings"]

log = logging.getLogger(__name__)

_LOAD_PATH = "/v1/load_lora_adapter"
_ALREADY_LOADED = "has already been loaded"  # vLLM's 400 for a name it has (serving.py:271)


class DeclaredAdapter(StrictModel):
    base_model: Name
    path: str = Field(min_length=1, description="Where the engine reads the adapter from "
                                                 "(vLLM's lora_path)")


class LoraSettings(StrictModel):
    # Adapters of a base model the picker may load on an engine serving that base model.
    adapters: dict[Name, DeclaredAdapter] = Field(default_factory=dict)
    load_on_demand: bool = False
    load_timeout_secs: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=2, ge=1, le=16)
    max_loads_in_flight: int = Field(default=2, ge=1, le=64)
    stale_after_secs: float = Field(default=5.0, gt=0)

    def longest_wait_secs(self) -> float:
        return self.load_timeout_secs * self.max_attempts if self.load_on_demand else 0.0


# Told that an engine now serves an adapter (worker, adapter, base): the fleet manager records
# it on the engine's workers, the one writer of their specs.
AdapterServed = Callable[[Worker, str, str], None]


class AdapterLoader:
    """Loads declared adapters nobody serves; `ensure` is the one entry point."""

    def __init__(self, workers: WorkerRegistry, settings: LoraSettings,
                 served: AdapterServed) -> None:
        self._workers = workers
        self._settings = settings
        self._served = served
        self._bound = asyncio.Semaphore(settings.max_loads_in_flight)
        self._loading: dict[str, asyncio.Future[None]] = {}
        self.loads = 0  # load requests sent, refused ones included

    @property
    def enabled(self) -> bool:
        return self._settings.load_on_demand and bool(self._settings.adapters)

    async def ensure(self, request: RoutingRequest) -> None:
        """Return once an engine serves the request's adapter, loading it if no routable one
        does; raises AdapterLoadFailed when every engine tried refused. Requests on models
        that are not declared adapters return at once."""
        declared = self._settings.adapters.get(request.model) if self.enabled else None
        if declared is None or self._held(request.model, declared.base_model):
            return
        pending = self._loading.get(request.model)
        if pending is not None:  # another request is loading it: its outcome is ours
            await asyncio.shield(pending)
            return
        pending = self._loading[request.model] = asyncio.get_running_loop().create_future()
        try:
            await self._load(request.model, declared)
            pending.set_result(None)
        except AdapterLoadFailed as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved, whether or not another request waits for it
            raise
        finally:
            del self._loading[request.model]
            if not pending.done():  # this request was cancelled: the others try again
                pending.cancel()

    def _held(self, adapter: str, base: str) -> bool:
        return any(w.routable and adapter in w.spec.adapters
                   for w in self._workers.for_model(base))

    async def _load(self, adapter: str, declared: DeclaredAdapter) -> None:
        base = declared.base_model
        now = time.monotonic()
        stale = self._settings.stale_after_secs
        engines = [w for w in self._workers.for_model(base) if w.routable]
        # Readiest first: a free adapter place (or unknown) before a full engine; then load.
        def readiness(worker: Worker) -> float:
            score = place_score(worker, adapter, now, stale)
            return FREE_PLACE if score is None else score

        engines.sort(key=lambda w: (-readiness(w), load_key(w), w.id))
        if not engines:
            raise AdapterLoadFailed(f"no routable engine serves {base[:100]!r}, the base model "
                                    f"of adapter {adapter[:100]!r}")
        last = "no engine tried"
        async with self._bound:
            for worker in engines[:self._settings.max_attempts]:
                refusal = await self._post(worker, adapter, declared.path)
                if refusal is None:
                    log.info("loaded LoRA adapter %s on worker %s", adapter, worker.id)
                    self._served(worker, adapter, base)
                    return
                last = f"worker {worker.id}: {refusal}"
                log.warning("LoRA adapter %s: load refused by %s", adapter, last)
        raise AdapterLoadFailed(f"LoRA adapter {adapter[:100]!r} could not be loaded ({last})")

    async def _post(self, worker: Worker, adapter: str, path: str) -> str | None:
        """None when the engine serves the adapter afterwards, else why not."""
        spec: WorkerSpec = worker.spec
        headers = {} if spec.api_key is None else {
            "authorization": f"Bearer {spec.api_key.get_secret_value()}"}
        self.loads += 1
        try:  # a client per load: loads are rare, and nothing is left to close at stop
            async with httpx.AsyncClient(verify=worker_tls()) as client:
                response = await client.post(
                    spec.network_url + _LOAD_PATH, headers=headers,
                    json={"lora_name": adapter, "lora_path": path},
                    timeout=self._settings.load_timeout_secs)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"[:200]
        if response.is_success:
            return None
        message = _message(response)
        if response.status_code == 400 and _ALREADY_LOADED in message:
            return None
        return f"{response.status_code} {message}"[:300]


def _message(response: httpx.Response) -> str:
    """vLLM's ErrorResponse message, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])[:200]
    return response.text[:200]
