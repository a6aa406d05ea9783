"""WorkerSpec: the one canonical description of an inference worker.

The same model is the admin API's input and output and the config file's `workers:` entries, so a
worker read back from the API can be posted again unchanged. Live state (in-flight, health) is not
configuration and lives on the registry's `Worker` record instead.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from picker.fleet.runtime_type import RuntimeType
from picker.parsers import REASONING_PARSERS, TOOL_PARSERS, check_parser_name
from picker.strict import StrictModel

__all__ = [
    "ConnectionMode",
    "KvEventsEndpoint",
    "HealthOverrides",
    "Labels",
    "RuntimeType",
    "WorkerSpec",
    "WorkerType",
    "redact_url",
    "unpaired_role",
]

def _not_bool(value: Any) -> Any:
    """JSON/YAML true is not the number 1 (pydantic's lax int would take it)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    return value


U32 = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=2**32 - 1)]
# The longest model name a request may carry (picker.routing.openai_body): a worker serving a longer
# one could never be routed to. Ids share it: they label metrics and log lines.
MAX_NAME_CHARS = 256
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
# Worker ids label metrics, log lines, headers and admin URL paths: a character set like
# Kubernetes object names (plus `_`, `:` for discovered `pod:port`, `@` for DP ranks and `[ ]`
# for LiteLLM's `[v6]:port` names), so a CR cannot break Prometheus' text format nor a `/` an
# admin path.
ID_CHARS = "letters, digits and . _ - : @ [ ]"
_ID = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:@\[\]-]*")
# Each data-parallel rank is a worker of its own (health-checked, scraped, scored): beyond this,
# a typo (dp_size: 100000) would make the picker spend itself on ranks that do not exist.
MAX_DP_SIZE = 256
Port = Annotated[int, Field(ge=1, le=65535)]
# How often a worker may be probed or scraped at most: 100 times a second. A smaller interval
# (a typo of 1e-9) would spend the picker's CPU on one engine.
PollSecs = Annotated[float, Field(ge=0.01)]


def _health_path(value: str) -> str:
    """A path on the worker: it is appended to the worker's url, so without its leading `/`
    the probe would miss (`health` gives http://h:8000health), and `@other:1/health` would
    send it to another host and report that host's health as this worker's."""
    if not value.startswith("/") or value.startswith("//"):
        raise PydanticCustomError("health_endpoint", "must be a path starting with one /, "
                                  "like /health; got {value}", {"value": repr(value[:100])})
    if any(c.isspace() or not c.isprintable() for c in value) or len(value) > 512:
        raise PydanticCustomError("health_endpoint", "must be a path of printable characters "
                                  "without spaces, at most 512")
    return value


HealthPath = Annotated[str, AfterValidator(_health_path)]
# Bounded like Kubernetes labels (63-character keys), so one request cannot make every worker
# view, listing and reindex carry megabytes.
MAX_LABELS = 64
Labels = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=63)],
         Annotated[str, Field(max_length=256)]],
    Field(max_length=MAX_LABELS),
]


class WorkerType(enum.StrEnum):
    """Role in prefill/decode disaggregation; `regular` workers do both."""

    REGULAR = "regular"
    PREFILL = "prefill"
    DECODE = "decode"


class ConnectionMode(enum.StrEnum):
    HTTP = "http"
    GRPC = "grpc"


class HealthOverrides(StrictModel):
    """Per-worker overrides of the global health-check settings; unset fields inherit them."""

    endpoint: HealthPath | None = None
    interval_secs: PollSecs | None = None
    timeout_secs: float | None = Field(default=None, gt=0)
    failure_threshold: int | None = Field(default=None, ge=1)
    success_threshold: int | None = Field(default=None, ge=1)
    disable: bool | None = None


class KvEventsEndpoint(StrictModel):
    """Where an engine publishes its KV-cache events (vLLM `--kv-events-config`'s endpoint and
    replay_endpoint, seen from the picker). A data-parallel rank r publishes on port + r, as
    vLLM offsets them, so one entry serves every rank of an engine. A gRPC worker may leave
    `endpoint` out: its engine's SubscribeKvEvents stream carries them (picker.prefix.kv_grpc)."""

    endpoint: str | None = Field(
        default=None, description="ZMQ PUB address, e.g. tcp://10.0.0.5:5557; unset on a gRPC "
                                  "worker: its SubscribeKvEvents stream")
    replay_endpoint: str | None = Field(default=None,
                                        description="ZMQ ROUTER address for missed batches")
    topic: str = ""

    @field_validator("endpoint", "replay_endpoint")
    @classmethod
    def _zmq_address(cls, address: str | None) -> str | None:
        if address is None:
            return None
        address = address.strip()
        scheme, _, rest = address.partition("://")
        if scheme == "ipc" and rest:
            return address
        host, _, port = rest.rpartition(":")
        if scheme != "tcp" or not host or "*" in host or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            raise ValueError(f"must be tcp://host:port or ipc://path, not "
                             f"{redact_url(address)[:100]!r} "
                             "(the picker connects: a wildcard host is the engine's bind side)")
        return address


class WorkerSpec(StrictModel):
    """A worker as operators configure it. Unknown fields are rejected, naming the field."""

    model_config = ConfigDict(use_enum_values=False)

    url: str = Field(description="Base URL, e.g. http://10.0.0.5:8000 (scheme defaults to http)")
    id: Name | None = Field(default=None, description="Stable name; derived from url when unset")
    models: list[Name] = Field(
        default_factory=list, description="Served model names; empty means any model"
    )
    adapters: dict[Name, Name] = Field(
        default_factory=dict,
        description="LoRA adapters the worker serves, adapter -> its base model (discovered "
                    "from /v1/models' parent when unset); each is a served model too")
    worker_type: WorkerType = WorkerType.REGULAR
    connection_mode: ConnectionMode = ConnectionMode.HTTP
    runtime_type: RuntimeType = RuntimeType.VLLM
    provider: str | None = None
    labels: Labels = Field(default_factory=dict)
    priority: U32 = Field(default=50, description="Higher is preferred where a policy uses it")
    cost: float = Field(default=1.0, gt=0, description="Relative cost; 1.0 is the baseline")
    overflow: bool = Field(default=False, description=(
        "Spill-over only: takes a model's requests when every other worker serving it is at "
        "limits.per_worker_max (e.g. another pool, or an external OpenAI-compatible endpoint "
        "with its own api_key)"))
    api_key: SecretStr | None = Field(default=None, exclude=True, description="Write-only")
    bootstrap_port: Port | None = None
    bootstrap_host: str | None = Field(default=None, description="Derived from url when unset")
    dp_base_url: str | None = None
    dp_rank: int | None = Field(default=None, ge=0, lt=MAX_DP_SIZE)
    dp_size: int | None = Field(default=None, ge=1, le=MAX_DP_SIZE)
    kv_connector: str | None = None
    kv_role: str | None = None
    kv_block_size: int | None = Field(default=None, ge=1)
    kv_events: KvEventsEndpoint | None = Field(
        default=None, description="Subscribe to the engine's KV events (prefix.index kv_events)")
    health: HealthOverrides = Field(default_factory=HealthOverrides)
    max_connection_attempts: int = Field(default=20, ge=1, le=100)
    load_monitor_interval_secs: PollSecs | None = None
    model_id: str | None = None
    tokenizer_path: str | None = None
    reasoning_parser: str | None = None
    tool_parser: str | None = None
    chat_template: str | None = None

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, key: SecretStr | None) -> SecretStr | None:
        """The key travels as `Authorization: Bearer <key>`: printable ASCII without spaces,
        or no request to the worker could carry it. The message never shows the key (the
        config and admin errors show pydantic's message, not the input)."""
        text = None if key is None else key.get_secret_value()
        if text is not None and not (text and all(33 <= ord(c) <= 126 for c in text)):
            raise ValueError("must be non-empty printable ASCII without spaces (it is sent in "
                             "the Authorization header)")
        return key

    @field_validator("tool_parser")
    @classmethod
    def _known_tool_parser(cls, name: str | None) -> str | None:
        """A parser the gRPC router has (picker.parsers), or no request could be answered."""
        return check_parser_name(name, TOOL_PARSERS, "tool_parser")

    @field_validator("reasoning_parser")
    @classmethod
    def _known_reasoning_parser(cls, name: str | None) -> str | None:
        return check_parser_name(name, REASONING_PARSERS, "reasoning_parser")

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, url: str) -> str:
        """Normalise to scheme://host:port; `{base}@{rank}` names one data-parallel rank."""
        base, rank = _split_rank(url.strip())
        if rank is not None and rank >= MAX_DP_SIZE:
            raise ValueError(f"rank {rank} (after @) must be below {MAX_DP_SIZE}, the "
                             "largest dp_size")
        url = _normalise_base(base)
        return url if rank is None else f"{url}@{rank}"

    @field_validator("id")
    @classmethod
    def _safe_id(cls, worker_id: str | None) -> str | None:
        if worker_id is not None and not _ID.fullmatch(worker_id):
            raise ValueError(f"id must be {ID_CHARS}, starting with a letter, digit or [ (as "
                             f"Kubernetes names), not {worker_id[:100]!r}")
        return worker_id

    @field_validator("dp_base_url")
    @classmethod
    def _normalise_dp_base(cls, url: str | None) -> str | None:
        return None if url is None else _normalise_base(url)

    @field_validator("models")
    @classmethod
    def _models_non_empty(cls, models: list[str]) -> list[str]:
        for name in models:
            if not name.strip():
                raise ValueError("model names must be non-empty")
        return models

    @model_validator(mode="after")
    def _adapters_served(self) -> WorkerSpec:
        """An adapter is a model the worker serves, of a base model it serves: with `models`
        listed, adapters join them (so a spec read back is posted again unchanged)."""
        for adapter, base in self.adapters.items():
            if adapter == base:
                raise PydanticCustomError("adapter_is_base", "adapter {adapter} names itself "
                                          "as its base model",
                                          {"adapter": adapter[:100], "field": "adapters"})
            if self.models and base not in self.models:
                raise PydanticCustomError(
                    "adapter_base", "adapter {adapter}'s base model {base} is not in models",
                    {"adapter": adapter[:100], "base": base[:100], "field": "adapters"})
        if self.models:
            self.models += [a for a in self.adapters if a not in self.models]
        return self

    @field_validator("kv_events")
    @classmethod
    def _kv_events_source(cls, events: KvEventsEndpoint | None,
                          info: ValidationInfo) -> KvEventsEndpoint | None:
        """Without a ZMQ endpoint the events come over the worker's gRPC service."""
        if events is not None and events.endpoint is None and (
                info.data.get("connection_mode") is not ConnectionMode.GRPC
                or events.replay_endpoint is not None or events.topic):
            raise ValueError("endpoint is needed with replay_endpoint or topic, and on a worker "
                             "that is not connection_mode grpc (a gRPC worker without one "
                             "subscribes to its engine's SubscribeKvEvents)")
        return events

    @model_validator(mode="after")
    def _derive(self) -> WorkerSpec:
        base, rank = _split_rank(self.url)
        if rank is not None:
            if self.dp_rank not in (None, rank):
                raise ValueError(f"url names rank {rank} but dp_rank is {self.dp_rank}")
            if self.dp_base_url not in (None, base):
                raise ValueError(f"url names base {base} but dp_base_url is {self.dp_base_url}")
            self.dp_rank, self.dp_base_url = rank, base
        if self.bootstrap_host is None:
            self.bootstrap_host = urlsplit(self.network_url).hostname
        if self.id is None:
            self.id = "w-" + hashlib.blake2b(self.url.encode(), digest_size=4).hexdigest()
        elif self.dp_size and self.dp_size > 1 and self.dp_rank is None \
                and len(self.id) + len(f"@{self.dp_size - 1}") > MAX_NAME_CHARS:
            # Each rank becomes a worker `{id}@{rank}` (picker.fleet.served_models.expand_dp_ranks).
            raise PydanticCustomError(
                "id_too_long", "with dp_size {dp_size} the rank ids (id@rank) would be over "
                "{limit} characters: shorten id",
                {"dp_size": self.dp_size, "limit": MAX_NAME_CHARS, "field": "id"})
        return self

    @field_validator("dp_size")
    @classmethod
    def _rank_below_size(cls, size: int | None, info: ValidationInfo) -> int | None:
        """Checked here rather than in `_derive` so the error names a field (`dp_size`)."""
        rank = info.data.get("dp_rank")
        if rank is None and "url" in info.data:
            rank = _split_rank(info.data["url"])[1]
        if size is not None and rank is not None and rank >= size:
            raise ValueError(f"dp_rank {rank} must be below dp_size {size}")
        return size

    @property
    def network_url(self) -> str:
        """Where to connect: a data-parallel rank is reached through its engine's base url."""
        return self.dp_base_url or self.url

    @property
    def host_port(self) -> str:
        """`host:port` as Envoy's ORIGINAL_DST cluster expects it in the destination header."""
        parts = urlsplit(self.network_url)
        port = parts.port or (443 if parts.scheme in ("https", "grpcs") else 80)
        host = parts.hostname or ""
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def updated(self, **changes: Any) -> WorkerSpec:
        """A re-validated copy with `changes` applied; keeps the (write-only) api_key."""
        data = {**self.model_dump(), "api_key": self.api_key, **changes}
        return WorkerSpec.model_validate(data)


def unpaired_role(role: WorkerType) -> str:
    """Why a prefill or decode worker is refused without enable_igw: with one router over every
    worker, a prefill engine would answer whole requests alone and a decode engine would get
    requests with no KV to take over."""
    return (f"{role.value} workers are paired with the other role only with enable_igw: true; "
            "without it they would serve whole requests alone. Set enable_igw: true, or leave "
            "worker_type out (regular)")


def _split_rank(url: str) -> tuple[str, int | None]:
    base, at, rank = url.rpartition("@")
    if at and rank.isascii() and rank.isdigit() and "://" in base \
            and "/" not in base.split("://", 1)[1]:
        return base, int(rank)
    return url, None


_RANK_SUFFIX = re.compile(r"@[0-9]+$")


def redact_url(url: str) -> str:
    """`url` with any userinfo (`user:password@`) replaced by `***@`, for error messages and
    logs: a url refused as invalid must not carry its credentials into them. Everything up to
    the last `@` (a DP rank suffix `@N` aside) counts as userinfo, even past a `/`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    suffix = _RANK_SUFFIX.search(rest)
    core, rank = (rest[:suffix.start()], suffix.group()) if suffix else (rest, "")
    if "@" in core:
        core = "***@" + core.rpartition("@")[2]
    return f"{scheme}{sep}{core}{rank}"


def _normalise_base(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")  # after the scheme test: "http://" must not turn into host "http"
    shown = redact_url(url)[:200]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "grpc", "grpcs"):
        raise ValueError(f"scheme must be http, https, grpc or grpcs, not {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in {shown!r}") from exc
    if not parts.hostname:
        raise ValueError(f"no host in {shown!r}")
    if not _valid_host(parts.hostname):
        raise ValueError(f"invalid host {parts.hostname[:100]!r}")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("url must be scheme://host[:port] with no path, query or credentials")
    if port == 0:
        raise ValueError(f"invalid port in {shown!r}")
    if port is None and parts.scheme.startswith("grpc"):
        raise ValueError("a grpc url needs an explicit port")
    # One spelling per endpoint (lower-case scheme and host, explicit port), so the registry's
    # url index cannot hold the same engine twice as `HTTP://A` and `http://a:80`.
    port = port or (443 if parts.scheme in ("https", "grpcs") else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _valid_host(host: str) -> bool:
    """A DNS name or an IP literal; anything else could not be put in a destination header."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOSTNAME.match(host) is not None
    return True
