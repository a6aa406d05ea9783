"""PickerConfig: one validated settings model fed by a YAML file, env vars and CLI flags.

Precedence is file < environment < flags. Environment variables are `LLM_PICKER_<KEY>` with `__`
between nesting levels (`LLM_PICKER_EXTPROC__PORT=9102`, `LLM_PICKER_POLICY__NAME=least_load`);
`LLM_PICKER_CONFIG` is not a key but the file's path, read by the adapters. Every problem surfaces
as a ConfigError naming the dotted key (and the variable, when the value came from one), before
anything starts listening.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from picker.errors import ConfigError
from picker.fleet.circuit import CircuitSettings
from picker.fleet.engine_scrape import LoadSettings
from picker.fleet.health import HealthSettings
from picker.fleet.lora_loading import LoraSettings
from picker.fleet.served_models import DiscoverySettings
from picker.fleet.worker_spec import WorkerSpec, WorkerType, unpaired_role
from picker.listen import ListenConfig, TlsConfig
from picker.observe.decisions import ExplainSettings
from picker.policies import PolicyParams, parse_params
from picker.prefix.producer import PrefixSettings
from picker.replicas.settings import ReplicaSettings
from picker.routing.admission import LimitSettings
from picker.routing.flow.settings import FlowSettings
from picker.routing.model_rewrite import ModelRewriteSettings
from picker.strict import StrictModel
from picker.trace.settings import TraceSettings

__all__ = [
    "CONFIG_ENV", "ENV_PREFIX", "GROUP_ENV", "AdminConfig", "ExtprocConfig", "ListenConfig",
    "LogConfig", "PickerConfig", "PolicyConfig", "TlsConfig", "TracingConfig", "config_from_data",
    "load_config", "read_config_file", "read_config_text",
]

ENV_PREFIX = "LLM_PICKER_"
# The configuration file's path: shares the prefix, so the key parser must skip it.
CONFIG_ENV = "LLM_PICKER_CONFIG"
# Set by `serve --workers N` for each of its processes (picker.processes.group); not a key.
GROUP_ENV = "LLM_PICKER_PROCESS_GROUP"


class ExtprocConfig(ListenConfig):
    """The ext_proc server Envoy calls, and the Endpoint Picker Protocol options gateways use.

    `tls: self_signed` serves TLS with a certificate generated at start-up, as gateways expect
    of an endpoint picker (they connect with TLS and do not verify it). `fallbacks`: how many
    endpoints after the chosen one the destination lists, so proxy retries walk them (needs an
    Envoy LB that reads lists: envoy/envoy-gateway-metadata.yaml). `conformance`: honour the
    Gateway API Inference Extension conformance suite's steering header; off, because it lets
    a client choose its upstream."""

    port: int = Field(default=9002, ge=0, le=65535)
    tls: TlsConfig | Literal["self_signed"] | None = None  # type: ignore[assignment]
    fallbacks: int = Field(default=0, ge=0, le=16)
    conformance: bool = False
    # Worker api_keys travel to Envoy in header mutations: whoever completes an ext_proc stream
    # reads them. Off, keyed workers need mutual TLS here (worker_keys_problem).
    allow_unauthenticated_keys: bool = False
    # The gRPC health services also on a plaintext port of their own: Kubernetes gRPC probes
    # speak no TLS (GIE's --grpc-health-port, where the inferencepool chart's probes go).
    health_port: int | None = Field(default=None, ge=0, le=65535)

    @property
    def authenticates_clients(self) -> bool:
        """Mutual TLS: only clients with a certificate from client_ca_file complete a stream."""
        return isinstance(self.tls, TlsConfig) and self.tls.client_ca_file is not None

    def worker_keys_problem(self) -> str | None:
        """Why a worker with an api_key may not be routed to through this port, or None."""
        if self.authenticates_clients or self.allow_unauthenticated_keys:
            return None
        return ("the picker sends a worker's api_key to Envoy in the ext_proc header "
                "mutation, so any client reaching the ext_proc port could read it: set "
                "extproc.tls with cert_file, key_file and client_ca_file (mutual TLS, Envoy "
                "presenting a client certificate), or extproc.allow_unauthenticated_keys: true "
                "to hand keys to whoever connects")

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_forms(cls, value: object) -> object:
        """Name both forms, rather than pydantic's first failed branch of the union."""
        if value is not None and not isinstance(value, (dict, TlsConfig)) \
                and value != "self_signed":
            raise ValueError("must be self_signed or a mapping with cert_file and key_file "
                             f"(and client_ca_file for mTLS), not {value!r}")
        return value


class AdminConfig(ListenConfig):
    """The admin API; `token` guards mutating calls (env: LLM_PICKER_ADMIN__TOKEN), and
    `read_token`, when set, the reads that show state (either token is accepted for them)."""

    port: int = Field(default=9003, ge=0, le=65535)
    # An empty token would let `Authorization: Bearer ` (nothing after it) through.
    token: SecretStr | None = Field(default=None, min_length=1)
    read_token: SecretStr | None = Field(default=None, min_length=1)
    # None: the mode's default - on for `llm-picker serve`, off inside LiteLLM (where binding a
    # port must be asked for).
    enabled: bool | None = None
    allow_insecure: bool = Field(
        default=False, description="Allow a non-loopback listener without a token"
    )
    # A connection must send a whole request (head and body) this soon after opening (or after
    # its first byte following a response), and is closed after this long idle between requests: no
    # half-open connection holds the port.
    header_timeout_secs: float = Field(default=10.0, gt=0, le=3600)
    keep_alive_timeout_secs: int = Field(default=5, ge=1, le=3600)
    # Where the workers added, changed and drained through the API are saved, so that they
    # survive a restart (picker.fleet.api_state); None: they live until the picker stops.
    state_file: Path | None = None

    @field_validator("state_file")
    @classmethod
    def _state_directory_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"the directory {path.parent} does not exist (the picker creates "
                             "the file, not its directory)")
        return path

    @model_validator(mode="after")
    def _no_open_admin(self) -> AdminConfig:
        if self.read_token is not None and self.token is None:
            raise ValueError("read_token without admin.token would guard reads and leave "
                             "changes open: set admin.token too")
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        if not loopback and self.token is None and not self.allow_insecure:
            raise ValueError(
                f"listening on {self.host} needs admin.token (or admin.allow_insecure: true)"
            )
        return self


class PolicyConfig(StrictModel):
    """The default policy; `x-routing-strategy` may name another per request."""

    name: str = "round_robin"
    params: dict[str, Any] = Field(default_factory=dict)


class PdConfig(StrictModel):
    """Prefill/decode disaggregation (with `enable_igw: true`): how pairs are chosen.

    Prefill is where a prompt's cache matters, decode where load does: by default prefill
    workers are chosen prefix-aware (cache_aware, when prefix.enabled) and decode workers
    load-aware (least_load)."""

    prefill_policy: PolicyConfig | None = None
    decode_policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig(name="least_load"))
    # Pairs tried per request when the prefill step fails (connect error, error status).
    max_attempts: int = Field(default=2, ge=1, le=10)
    prefill_timeout_secs: float = Field(default=60.0, gt=0)

    @field_validator("prefill_policy", "decode_policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def prefill(self, prefix_enabled: bool) -> PolicyConfig:
        if self.prefill_policy is not None:
            return self.prefill_policy
        return PolicyConfig(name="cache_aware" if prefix_enabled else "least_load")


class TracingConfig(StrictModel):
    """OpenTelemetry spans, one per routing decision (picker.observe.tracing; the `tracing`
    extra). Where they go is OpenTelemetry's own environment: OTEL_EXPORTER_OTLP_ENDPOINT
    (default localhost:4317, OTLP/gRPC), OTEL_TRACES_SAMPLER and its argument,
    OTEL_SERVICE_NAME (default llm-picker)."""

    enabled: bool = False


class LogConfig(StrictModel):
    """Process logging. The access log is opt-in: one JSON line per request is real I/O on
    the hot path, and operators who have Envoy's access log may not want a second one."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one JSON object per line (what log collectors parse; GIE's --zap-encoder json).
    format: Literal["text", "json"] = "text"
    access: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# The largest body limit the ext_proc server can take: gRPC's message length limits are signed
# 32-bit, and the server allows the body plus 64 KiB of framing (extproc/server.py).
MAX_BODY_BYTES_LIMIT = 2**31 - 1 - 64 * 1024


class PickerConfig(StrictModel):
    extproc: ExtprocConfig = Field(default_factory=lambda: ExtprocConfig(port=9002))
    admin: AdminConfig = Field(default_factory=lambda: AdminConfig(port=9003))
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1, le=MAX_BODY_BYTES_LIMIT)
    health: HealthSettings = Field(default_factory=HealthSettings)
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    prefix: PrefixSettings = Field(default_factory=PrefixSettings)
    # Replicas behind one Envoy cluster sharing their approximate-index picks (picker/replicas).
    replicas: ReplicaSettings | None = None
    load: LoadSettings = Field(default_factory=LoadSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    flow: FlowSettings = Field(default_factory=FlowSettings)
    workers: list[WorkerSpec] = Field(default_factory=list)
    # Parameters of other policies, by name, for requests choosing them with
    # `x-routing-strategy` (unlisted ones run with their defaults).
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    log: LogConfig = Field(default_factory=LogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    # SGLang gateway's "IGW" mode: a router per connection mode and worker role (regular,
    # prefill/decode pairs), chosen per request; off: one router over all workers.
    enable_igw: bool = False
    pd: PdConfig = Field(default_factory=PdConfig)
    explain: ExplainSettings = Field(default_factory=ExplainSettings)
    # LoRA adapters declared with their base model and path, and loading them on an engine
    # when none serves one (picker.fleet.lora_loading).
    lora: LoraSettings = Field(default_factory=LoraSettings)
    model_rewrites: ModelRewriteSettings = Field(default_factory=ModelRewriteSettings)
    # Record one line per request for `llm-picker replay` (picker.trace); off when absent.
    trace: TraceSettings | None = None
    # The event loop `serve` runs on: auto is uvloop when installed (less CPU per ext_proc
    # request, docs/benchmarks.md), else asyncio's; uvloop refuses to start without it.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        """`policy: least_load` is shorthand for `policy: {name: least_load}`."""
        return {"name": value} if isinstance(value, str) else value

    def policy_params(self) -> dict[str, PolicyParams]:
        """Every configured policy's parsed parameters, the default policy's included.

        Engine metrics older than load.stale_after_secs are unknown to a policy too, unless
        its own params set stale_after_secs. Raises ConfigError naming the key."""
        stale = self.load.stale_after_secs
        parsed = {name: parse_params(name, raw, f"policies.{name}", stale, flat=True)
                  for name, raw in self.policies.items()}
        if self.policy.name in parsed and self.policy.params:
            raise ConfigError("policy.params", f"parameters of {self.policy.name} are also given "
                              f"in policies.{self.policy.name}: keep one")
        if self.policy.params or self.policy.name not in parsed:
            parsed[self.policy.name] = parse_params(self.policy.name, self.policy.params,
                                                    "policy", stale)
        return parsed

    def longest_wait_secs(self) -> float:
        """The longest the picker may take to answer one request's pick, from its own waits:
        the admission queue, a remote tokenizer's attempts, a prefill/decode pair's prefills.
        A proxy's timeout for the pick (Envoy's ext_proc message_timeout) must be longer."""
        wait = 0.0
        limits = self.limits
        if limits.max_concurrent_requests and limits.queue_size:
            wait += limits.queue_timeout_secs
        if self.flow.enabled:
            wait += max(self.flow.ttl_secs, self.flow.no_worker_ttl_secs)
        tokenizer = self.prefix.tokenizer
        if self.prefix.enabled and tokenizer.kind == "remote":
            wait += tokenizer.timeout_secs * (tokenizer.retries + 1)
        if self.enable_igw:
            wait += self.pd.prefill_timeout_secs * self.pd.max_attempts
        return wait + self.lora.longest_wait_secs()

    def pd_policies(self) -> dict[str, tuple[str, PolicyParams]]:
        """The prefill and decode policies (enable_igw) by role: name and parsed params."""
        stale = self.load.stale_after_secs
        roles = {"prefill": self.pd.prefill(self.prefix.enabled), "decode": self.pd.decode_policy}
        return {role: (chosen.name, parse_params(chosen.name, chosen.params,
                                                 f"pd.{role}_policy", stale))
                for role, chosen in roles.items()}


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PickerConfig:
    """Merge file, env and dotted-key overrides, validate, and check the policy can be built."""
    data = read_config_file(Path(path)) if path is not None else {}
    return config_from_data(data, env, overrides)


def read_config_file(path: Path) -> dict[str, Any]:
    """A configuration file's YAML as a mapping; ConfigError naming the file when it cannot be
    read or is not one."""
    return read_config_text(_read_text(path), str(path))


def config_from_data(data: dict[str, Any], env: Mapping[str, str] | None = None,
                     overrides: Mapping[str, Any] | None = None) -> PickerConfig:
    """load_config for a mapping already read (a ConfigMap's embedded file, say)."""
    from_env = _env_overrides(env or {})
    try:
        for key, (value, _) in from_env.items():
            _set_dotted(data, key, value)
        for key, value in (overrides or {}).items():
            if value is not None:
                _set_dotted(data, key, value)
        while True:
            try:
                return _validate(data)
            except ConfigError as exc:
                # `LLM_PICKER_ADMIN__TOKEN=12345` reads as a YAML number where the key wants
                # text: take the variable's text as written, then validate again.
                raw = env.get(from_env[exc.key][1], "") if exc.key in from_env and env else ""
                if "valid string" not in str(exc) or not raw or _dotted(data, exc.key) == raw:
                    raise
                _set_dotted(data, exc.key, raw)
    except ConfigError as exc:
        flagged = {key for key, value in (overrides or {}).items() if value is not None}
        variables = [name for key, (_, name) in from_env.items()
                     if key not in flagged and _related(key, exc.key)]
        if not variables:
            raise
        message = str(exc).removeprefix(f"{exc.key}: ")
        raise ConfigError(exc.key, f"{message} (set by {', '.join(sorted(variables))})") from exc


def _related(env_key: str, error_key: str) -> bool:
    """The error is about this variable's key, a section it sits in, or a key inside it."""
    return (env_key == error_key or env_key.startswith(f"{error_key}.")
            or error_key.startswith(f"{env_key}."))


def _validate(data: dict[str, Any]) -> PickerConfig:
    try:
        config = PickerConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        # A validator's own ValueError already says what is wrong: no "Value error, " before it.
        message = first["msg"].removeprefix("Value error, ")
        if loc[-1:] == ["[key]"]:  # a mapping's key, not its value, is wrong: name it so
            *loc, bad = loc[:-1]
            message = f"key {bad[:60]!r}{'...' if len(bad) > 60 else ''}: {message}"
        # Union members appear in the location as "function-after[..., TlsConfig]": not keys.
        key = ".".join(part for part in loc if "[" not in part) or "<root>"
        raise ConfigError(key, message) from exc
    _check_unique_workers(config.workers)
    if not config.enable_igw:
        for i, spec in enumerate(config.workers):
            if spec.worker_type is not WorkerType.REGULAR:
                raise ConfigError(f"workers.{i}.worker_type", unpaired_role(spec.worker_type))
    _check_worker_keys(config)
    if config.explain.allow_header and not config.explain.enabled:
        raise ConfigError("explain.allow_header", "the explain header reads decision records: "
                          "set explain.enabled: true")
    if config.prefix.enabled and (problem := config.prefix.engine_tokens_problem()):
        raise ConfigError("prefix.tokenizer.kind", problem)
    _check_policies(config)
    if config.flow.enabled and config.limits.queue_size:
        raise ConfigError("limits.queue_size", "flow control (flow.enabled) replaces the "
                          "admission queue: set limits.queue_size to 0 (flow.max_queued bounds "
                          "the queues)")
    if config.replicas is not None and not (config.prefix.enabled
                                            and config.prefix.index == "approximate"):
        raise ConfigError("replicas", "replicas share the picks of the approximate prefix "
                          "index: set prefix.enabled (index approximate); with kv_events the "
                          "engines' events already keep replicas in agreement")
    return config


def _check_policies(config: PickerConfig) -> None:
    """Each configured policy's parameters parse, and what it reads is switched on."""
    keyed = [("policy" if name == config.policy.name else f"policies.{name}", name, params)
             for name, params in config.policy_params().items()]
    if config.enable_igw:
        keyed += [(f"pd.{role}_policy", name, params)
                  for role, (name, params) in config.pd_policies().items()]
    for key, name, params in keyed:
        if params.needs_prefix() and not config.prefix.enabled:
            raise ConfigError("prefix.enabled", f"policy {name} ({key}) reads the prefix "
                              "index: set prefix.enabled: true")
        signals = params.engine_signals()
        if signals and not config.load.enabled:
            read = ", ".join(sorted(s.value for s in signals))
            raise ConfigError("load.enabled", f"policy {name} ({key}) reads engine metrics "
                              f"({read}): set load.enabled: true")


def _check_unique_workers(workers: list[WorkerSpec]) -> None:
    """Two entries for one url or id would fail later, in the registry, as a crash at start-up."""
    seen: dict[tuple[str, str], int] = {}
    for i, spec in enumerate(workers):
        for field, value in (("url", spec.url), ("id", spec.id or spec.url)):
            first = seen.setdefault((field, value), i)
            if first != i:
                raise ConfigError(f"workers.{i}.{field}",
                                  f"{value!r} is already used by workers.{first}")


def _check_worker_keys(config: PickerConfig) -> None:
    """Keys go to ext_proc clients: refused at start-up unless those clients authenticate."""
    keyed = [i for i, spec in enumerate(config.workers) if spec.api_key is not None]
    problem = config.extproc.worker_keys_problem()
    if keyed and problem is not None:
        raise ConfigError("extproc.tls", f"workers.{keyed[0]}.api_key is set: {problem}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{path} is not UTF-8 text: {exc.reason} at byte "
                          f"{exc.start}") from exc


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second `policy:` further down a file would quietly win over the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_text(text: str, source: str) -> dict[str, Any]:
    """A configuration's YAML as a mapping; `source` names it in errors."""
    try:
        loaded = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{source} is not valid YAML: {_one_line(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("config", f"{source} must hold a mapping, not "
                          f"{type(loaded).__name__}")
    return loaded


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's message spans lines (context, a caret drawing); keep what and where."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


# What Kubernetes injects into every pod for a Service named llm-picker in its namespace
# (service links: LLM_PICKER_SERVICE_HOST, LLM_PICKER_PORT_9002_TCP_ADDR, ...): not settings.
_SERVICE_LINK = re.compile(r"LLM_PICKER_(SERVICE_(HOST|PORT)\w*|PORT(_\d+_(TCP|UDP|SCTP)\w*)?)")


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Dotted key -> (parsed value, the variable it came from)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in (CONFIG_ENV, GROUP_ENV) \
                or _SERVICE_LINK.fullmatch(name):
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        if "" in key.split("."):
            raise ConfigError(name, "names no setting: a section and its key are separated by "
                              "two underscores, e.g. LLM_PICKER_POLICY__NAME")
        try:
            out[key] = (yaml.safe_load(raw) if raw else raw, name)
        except yaml.YAMLError as exc:
            raise ConfigError(key, f"{name} is not a valid value: {exc}") from exc
    return out


def _dotted(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted key, None where a part is missing."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key; a mapping merges into the section already there (`prefix={"enabled":
    True}` keeps the file's other prefix settings), anything else replaces it."""
    *parents, leaf = key.split(".")
    node = data
    walked = []
    for part in parents:
        walked.append(part)
        child = node.setdefault(part, {})
        if isinstance(child, str) and part == "policy":
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(".".join(walked), "is not a section and cannot take sub-keys")
        node = child
    node[leaf] = _merged(node.get(leaf), value)


def _merged(current: Any, value: Any) -> Any:
    """`value` over `current`, mappings merged key by key; a mapping naming another `name`
    (`policy: {name: random}` over the file's prefix_cache) replaces the section: the old
    one's params belong to the old name."""
    if isinstance(current, dict) and isinstance(value, dict) \
            and current.get("name", value.get("name")) == value.get("name", current.get("name")):
        return {**current, **{k: _merged(current.get(k), v) for k, v in value.items()}}
    return value
