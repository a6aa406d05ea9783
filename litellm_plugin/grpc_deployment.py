"""What a gRPC deployment's litellm_params say: its engine, as the WorkerSpec the picker knows.

A deployment `model: llm-picker-grpc/<model>` with `api_base: grpc://host:port` is an engine's
gRPC service (SGLang's, or vLLM's with `runtime_type: vllm`), called by LiteLLM's custom
provider (litellm_plugin.grpc_provider). Its gRPC worker fields (`runtime_type`,
`tokenizer_path`, `chat_template`, `tool_parser`, `reasoning_parser`) sit in litellm_params
beside `model`; LiteLLM hands such unknown keys to the provider among its
`optional_params`. One reading serves the provider (which sends the call) and the picker's
deployment source (which health-checks the engine over gRPC and routes to it), so both check
the same fields the same way, with WorkerSpec's own validators.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from picker.errors import InvalidRequest
from picker.fleet.worker_spec import ConnectionMode, RuntimeType, WorkerSpec

__all__ = ["ENGINE_KEYS", "PROVIDER", "engine_fields", "engine_spec", "is_grpc_deployment"]

# The provider name a deployment's `model` starts with, and custom_provider_map's `provider`.
PROVIDER = "llm-picker-grpc"
# litellm_params keys that describe the engine, not the request.
ENGINE_KEYS = ("runtime_type", "tokenizer_path", "chat_template", "tool_parser",
               "reasoning_parser")


def is_grpc_deployment(litellm_params: Mapping[str, Any]) -> bool:
    return str(litellm_params.get("model", "")).startswith(PROVIDER + "/")


def engine_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The WorkerSpec fields (beyond url) of a gRPC deployment's engine: SGLang's service
    unless `runtime_type` names another, which the provider calls
    (picker.grpc_route.engines)."""
    return {"connection_mode": ConnectionMode.GRPC, "runtime_type": RuntimeType.SGLANG,
            **{key: params[key] for key in ENGINE_KEYS if params.get(key) is not None}}


def engine_spec(api_base: str | None, params: Mapping[str, Any]) -> WorkerSpec:
    """The engine a call goes to; InvalidRequest naming the litellm_params field that is
    wrong (a deployment's mistake, so every call to it says so)."""
    if not api_base or urlsplit(api_base).scheme != "grpc":
        raise InvalidRequest(f"litellm_params.api_base must be grpc://host:port for a "
                             f"{PROVIDER} deployment, not {str(api_base)[:100]!r}",
                             param="api_base")
    try:
        return WorkerSpec.model_validate({"url": api_base, **engine_fields(params)})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "api_base"
        field = "api_base" if field == "url" else field
        raise InvalidRequest(f"litellm_params.{field}: {error['msg']}", param=field) from exc
