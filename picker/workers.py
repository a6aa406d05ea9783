"""WorkerSpec: the one canonical description of an inference worker.

The same model is the admin API's input and output and the config file's `workers:` entries, so a
worker read back from the API can be posted again unchanged. Live state (in-flight, health) is not
configuration and lives on the registry's `Worker` record instead.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "ConnectionMode",
    "HealthOverrides",
    "RuntimeType",
    "WorkerSpec",
    "WorkerType",
]

U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
Port = Annotated[int, Field(ge=1, le=65535)]


class WorkerType(enum.StrEnum):
    """Role in prefill/decode disaggregation; `regular` workers do both."""

    REGULAR = "regular"
    PREFILL = "prefill"
    DECODE = "decode"


class ConnectionMode(enum.StrEnum):
    HTTP = "http"
    GRPC = "grpc"


class RuntimeType(enum.StrEnum):
    """Which engine is behind the url; selects metric names and discovery endpoints."""

    SGLANG = "sglang"
    VLLM = "vllm"
    TRTLLM = "trtllm"
    EXTERNAL = "external"


class HealthOverrides(BaseModel):
    """Per-worker overrides of the global health-check settings; unset fields inherit them."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = None
    interval_secs: float | None = Field(default=None, gt=0)
    timeout_secs: float | None = Field(default=None, gt=0)
    failure_threshold: int | None = Field(default=None, ge=1)
    success_threshold: int | None = Field(default=None, ge=1)
    disable: bool | None = None


class WorkerSpec(BaseModel):
    """A worker as operators configure it. Unknown fields are rejected, naming the field."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    url: str = Field(description="Base URL, e.g. http://10.0.0.5:8000 (scheme defaults to http)")
    id: str | None = Field(default=None, description="Stable name; derived from url when unset")
    models: list[str] = Field(
        default_factory=list, description="Served model names; empty means any model"
    )
    worker_type: WorkerType = WorkerType.REGULAR
    connection_mode: ConnectionMode = ConnectionMode.HTTP
    runtime_type: RuntimeType = RuntimeType.VLLM
    provider: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    priority: U32 = Field(default=50, description="Higher is preferred where a policy uses it")
    cost: float = Field(default=1.0, gt=0, description="Relative cost; 1.0 is the baseline")
    api_key: SecretStr | None = Field(default=None, exclude=True, description="Write-only")
    bootstrap_port: Port | None = None
    bootstrap_host: str | None = Field(default=None, description="Derived from url when unset")
    dp_base_url: str | None = None
    dp_rank: int | None = Field(default=None, ge=0)
    dp_size: int | None = Field(default=None, ge=1)
    kv_connector: str | None = None
    kv_role: str | None = None
    kv_block_size: int | None = Field(default=None, ge=1)
    health: HealthOverrides = Field(default_factory=HealthOverrides)
    max_connection_attempts: int = Field(default=20, ge=1)
    load_monitor_interval_secs: float | None = Field(default=None, gt=0)
    model_id: str | None = None
    tokenizer_path: str | None = None
    reasoning_parser: str | None = None
    tool_parser: str | None = None
    chat_template: str | None = None

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, url: str) -> str:
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "grpc", "grpcs"):
            raise ValueError(f"scheme must be http, https, grpc or grpcs, not {parts.scheme!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port in {url!r}") from exc
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        if port is None and parts.scheme.startswith("grpc"):
            raise ValueError("a grpc url needs an explicit port")
        return url

    @field_validator("models")
    @classmethod
    def _models_non_empty(cls, models: list[str]) -> list[str]:
        for name in models:
            if not name.strip():
                raise ValueError("model names must be non-empty")
        return models

    @model_validator(mode="after")
    def _derive(self) -> WorkerSpec:
        if self.bootstrap_host is None:
            self.bootstrap_host = urlsplit(self.url).hostname
        if self.id is None:
            self.id = "w-" + hashlib.blake2b(self.url.encode(), digest_size=4).hexdigest()
        if self.dp_rank is not None and self.dp_size is not None and self.dp_rank >= self.dp_size:
            raise ValueError(f"dp_rank {self.dp_rank} must be below dp_size {self.dp_size}")
        return self

    @property
    def host_port(self) -> str:
        """`host:port` as Envoy's ORIGINAL_DST cluster expects it in the destination header."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme in ("https", "grpcs") else 80)
        host = parts.hostname or ""
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models
