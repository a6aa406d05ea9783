"""Ask a gRPC worker what it serves: SGLang's GetModelInfo and GetServerInfo.

The gRPC twin of picker.fleet.served_models' HTTP reads (/v1/models, /get_model_info,
/get_server_info): a worker registered without `models` serves GetModelInfo's
`served_model_name` (sglang_scheduler.proto:516); `tokenizer_path` (:512) and the server args'
`dp_size` (GetServerInfoResponse.server_args, :543, SGLang's ServerArgs names) fill what the
spec leaves out. A worker without `tokenizer_path` gets its engine's own tokenizer with
GetTokenizer (picker.fleet.grpc_tokenizer), or, from an engine that serves none, GetModelInfo's
path. Discovery fills gaps; it never overrides what the operator set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.fleet.grpc_calls import EngineCallFailed, EngineCalls
from picker.fleet.grpc_tokenizer import fetch_tokenizer
from picker.fleet.worker_spec import MAX_NAME_CHARS, RuntimeType, WorkerSpec

__all__ = ["complete_grpc"]


# What an engine without a tokenizer to send answers (the servicer without a tokenizer path:
# FAILED_PRECONDITION; one without the method: UNIMPLEMENTED).
_NO_TOKENIZER = frozenset({"FAILED_PRECONDITION", "UNIMPLEMENTED"})


async def complete_grpc(spec: WorkerSpec, timeout: float, tokenizer_cache: Path) -> WorkerSpec:
    """The spec with what the worker says filled in; EngineCallFailed (an OSError) when it
    does not answer, ValueError when what it says cannot be served. `timeout` bounds each
    unary call; the caller bounds the whole (a tokenizer's stream included)."""
    calls = EngineCalls()
    try:
        complete = await _complete(spec, calls, timeout)
        if spec.tokenizer_path is None:
            try:
                fetched = await fetch_tokenizer(calls, spec, tokenizer_cache)
            except EngineCallFailed as exc:
                if exc.status not in _NO_TOKENIZER:
                    raise
            else:
                complete = complete.updated(tokenizer_path=str(fetched))
        return complete
    finally:
        await calls.close()


async def _complete(spec: WorkerSpec, calls: EngineCalls, timeout: float) -> WorkerSpec:
    update: dict[str, Any] = {}
    info = None
    if spec.models:
        # Reachability only: the operator said what it serves.
        health = await calls.health(spec, timeout)
        if not health.healthy:
            raise EngineCallFailed(f"HealthCheck on {spec.url}: unhealthy "
                                   f"({health.message[:100]})")
    else:
        info = await calls.model_info(spec, timeout)
        name = info.served_model_name
        if not name or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"GetModelInfo named no model of 1-{MAX_NAME_CHARS} characters "
                             f"(served_model_name {name[:100]!r})")
        update["models"] = [name]
        update["model_id"] = spec.model_id or name
    if spec.runtime_type is RuntimeType.SGLANG:
        update.update(await _sglang_info(spec, calls, timeout, info))
    return spec.updated(**{k: v for k, v in update.items() if k == "models"
                           or getattr(spec, k) is None})


async def _sglang_info(spec: WorkerSpec, calls: EngineCalls, timeout: float,
                       info: pb.GetModelInfoResponse | None) -> dict[str, Any]:
    """Absent or odd fields are skipped, as the HTTP reads skip them; `info`: GetModelInfo's
    answer when it was already asked."""
    found: dict[str, Any] = {}
    try:
        info = info or await calls.model_info(spec, timeout)
        server = await calls.server_info(spec, timeout)
    except EngineCallFailed:
        return found
    if info.tokenizer_path:
        found["tokenizer_path"] = info.tokenizer_path
    dp_size = server.server_args.fields.get("dp_size")
    if dp_size is not None and dp_size.WhichOneof("kind") == "number_value" \
            and dp_size.number_value.is_integer() and dp_size.number_value >= 1:
        found["dp_size"] = int(dp_size.number_value)
    return found
