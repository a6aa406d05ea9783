"""Ask a worker what it serves: OpenAI `/v1/models`, and SGLang's model and server info (over
gRPC for a gRPC worker: picker.fleet.grpc_discovery).

Used when a worker is registered without `models`, and to learn data-parallel size: a DP engine
becomes one logical worker per rank (`{base}@{rank}`), so load is tracked per rank.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from picker.errors import PickerError
from picker.fleet.grpc_discovery import complete_grpc
from picker.fleet.grpc_tokenizer import default_cache_dir
from picker.fleet.sources.settings import DnsSettings, KubernetesSettings
from picker.fleet.worker_spec import MAX_NAME_CHARS, ConnectionMode, RuntimeType, WorkerSpec
from picker.strict import StrictModel

__all__ = ["DiscoverySettings", "WorkerUnreachable", "discover", "expand_dp_ranks"]

log = logging.getLogger(__name__)


class DiscoverySettings(StrictModel):

    attempt_timeout_secs: float = Field(default=2.0, gt=0)
    backoff_initial_secs: float = Field(default=0.1, ge=0)
    backoff_max_secs: float = Field(default=2.0, ge=0)
    # Bounds every registration's wait, whatever a worker's max_connection_attempts says: an
    # admin call or a reload must not hang for half a minute on an engine that is down.
    max_wait_secs: float = Field(default=10.0, gt=0)
    # Where tokenizers fetched from gRPC engines (GetTokenizer) are unpacked, one directory per
    # bundle, the 16 most recently used kept; unset: llm-picker-tokenizers in the temp dir.
    tokenizer_cache_dir: str | None = None
    # Sources that find workers by themselves; each owns the workers it found (WorkerManager).
    kubernetes: KubernetesSettings | None = None
    dns: DnsSettings | None = None


class WorkerUnreachable(PickerError):
    """The worker did not answer within `max_connection_attempts` or `max_wait_secs`."""


def _auth(spec: WorkerSpec) -> dict[str, str]:
    if spec.api_key is None:
        return {}
    return {"authorization": f"Bearer {spec.api_key.get_secret_value()}"}


async def _get_json(client: httpx.AsyncClient, spec: WorkerSpec, path: str,
                    timeout: float) -> Any:
    response = await client.get(spec.network_url + path, headers=_auth(spec), timeout=timeout)
    response.raise_for_status()
    return response.json()


async def discover(
    spec: WorkerSpec, client: httpx.AsyncClient, settings: DiscoverySettings,
    attempts: int | None = None,
) -> WorkerSpec:
    """Connect (with backoff) and fill in what the spec leaves out; returns the completed spec.

    Tries `attempts` times (default: the spec's max_connection_attempts), and never longer than
    `settings.max_wait_secs` in all.
    """
    attempts = attempts or spec.max_connection_attempts
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.max_wait_secs
    delay = settings.backoff_initial_secs
    last_error = "no attempt made"
    made = 0
    while made < attempts:
        left = deadline - loop.time()
        if left <= 0:
            break
        made += 1
        try:
            async with asyncio.timeout(left):  # TimeoutError is an OSError
                return await _complete(spec, client, settings)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"[:200]
        if made < attempts:
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2 or settings.backoff_initial_secs, settings.backoff_max_secs)
    raise WorkerUnreachable(
        f"{spec.url} did not answer after {made} attempts in {settings.max_wait_secs:g} s at "
        f"most ({last_error})"
    )


async def _complete(spec: WorkerSpec, client: httpx.AsyncClient,
                    settings: DiscoverySettings) -> WorkerSpec:
    timeout = settings.attempt_timeout_secs
    if spec.connection_mode is ConnectionMode.GRPC:
        cache = settings.tokenizer_cache_dir
        return await complete_grpc(spec, timeout,
                                   default_cache_dir() if cache is None else Path(cache))
    update: dict[str, Any] = {}
    if spec.models:
        # Reachability only: the operator said what it serves.
        response = await client.get(spec.network_url + (spec.health.endpoint or "/health"),
                                    headers=_auth(spec), timeout=timeout)
        response.raise_for_status()
    else:
        listing = await _get_json(client, spec, "/v1/models", timeout)
        cards = [m for m in listing.get("data", []) if isinstance(m, dict)
                 and isinstance(m.get("id"), str) and m["id"]]
        listed = [m["id"] for m in cards]
        # A request names its model in at most MAX_NAME_CHARS: a longer one (vLLM lists the
        # model's path by default) could never be asked for. It is left out, not fatal.
        models = [m for m in listed if len(m) <= MAX_NAME_CHARS]
        if len(models) < len(listed):
            log.warning("%s: /v1/models listed %d model(s) over %d characters, which requests "
                        "cannot name; left out (serve them under --served-model-name)",
                        spec.url, len(listed) - len(models), MAX_NAME_CHARS)
        if not models:
            raise ValueError(f"/v1/models listed no model of at most {MAX_NAME_CHARS} "
                             "characters")
        update["models"] = models
        update["model_id"] = spec.model_id or models[0]
        if not spec.adapters:
            update["adapters"] = _adapters(cards, models)
    if spec.runtime_type is RuntimeType.SGLANG:
        update.update(await _sglang_info(spec, client, timeout))
    # Discovery fills gaps; it never overrides what the operator set.
    return spec.updated(**{k: v for k, v in update.items() if k in ("models", "adapters")
                           or getattr(spec, k) is None})


def _adapters(cards: list[dict[str, Any]], models: list[str]) -> dict[str, str]:
    """LoRA adapters among listed models: vLLM lists each with `parent` = its base model and
    `root` = its path, the base model with no parent (vllm/entrypoints/openai/models/
    serving.py:149-165)."""
    return {card["id"]: card["parent"] for card in cards
            if card["id"] in models and isinstance(card.get("parent"), str)
            and card["parent"] in models and card["parent"] != card["id"]}


async def _sglang_info(spec: WorkerSpec, client: httpx.AsyncClient,
                       timeout: float) -> dict[str, Any]:
    """SGLang's /get_model_info and /get_server_info; absent or odd fields are skipped."""
    found: dict[str, Any] = {}
    try:
        model = await _get_json(client, spec, "/get_model_info", timeout)
        server = await _get_json(client, spec, "/get_server_info", timeout)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError):
        return found
    if isinstance(model, dict) and isinstance(model.get("tokenizer_path"), str):
        found["tokenizer_path"] = model["tokenizer_path"]
    if isinstance(server, dict) and isinstance(server.get("dp_size"), int) \
            and server["dp_size"] >= 1:
        found["dp_size"] = server["dp_size"]
    return found


def expand_dp_ranks(spec: WorkerSpec) -> list[WorkerSpec]:
    """One logical worker per data-parallel rank, `{base}@{rank}`; others unchanged."""
    if not spec.dp_size or spec.dp_size == 1 or spec.dp_rank is not None:
        return [spec]
    return [
        spec.updated(url=f"{spec.url}@{rank}", id=f"{spec.id}@{rank}", dp_base_url=spec.url,
                     dp_rank=rank, bootstrap_host=None)
        for rank in range(spec.dp_size)
    ]
