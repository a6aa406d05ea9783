"""The command line of the Gateway API Inference Extension's endpoint picker (GIE), parsed by the
rules of the Go library it uses (spf13/pflag), into what each flag means for this picker.

The `inferencepool` Helm chart starts its endpoint picker container with these flags (GIE
v1.5.0 config/charts/epplib/templates/_deployment.yaml:75-145), so a picker image that accepts
them drops into that chart with only the image changed. Every flag GIE v1.5.0 defines is in
FLAGS once, with what it does here:

- a setting: the value becomes a picker setting (`--pool-name` -> discovery.kubernetes);
- a note: accepted, and named in the start-up log with why it changes nothing here;
- a refusal: it asks for what this picker cannot do; start-up stops, naming the flag.

Sources: pkg/epp/server/options.go:120-193 (the flags; their defaults at 93-118, checks at
205-248), pkg/common/observability/logging/options.go:50-63 (-v) and controller-runtime's
pkg/log/zap/zap.go Options.BindFlags (the zap-* flags).

pflag's rules, kept: `--name value` or `--name=value`; a boolean is `--name` or `--name=<b>`
with Go's strconv.ParseBool spellings; `-v` is `--v`; a flag given twice keeps its last value;
an unknown flag or a stray argument is an error.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.errors import ConfigError

__all__ = ["FLAGS", "Invocation", "parse_flags"]

# What the inferencepool chart's pool belongs to; the only group GIE v1.5.0 supports
# (options.go:129-130), and the one the picker follows (inference.networking.k8s.io/v1).
POOL_GROUP = "inference.networking.k8s.io"
# GIE's verbosity levels (pkg/common/observability/logging/const.go:20-23): DEBUG is 4.
_GIE_DEBUG = 4


class Kind(enum.Enum):
    BOOL = "bool"
    INT = "int"
    TEXT = "string"
    DURATION = "duration"
    INTS = "ints"  # pflag IntSlice: comma-separated


@dataclass
class Invocation:
    """What the flags ask of the picker: settings by dotted key, and notes to log (flags
    accepted that change nothing here)."""

    settings: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    notes: list[str] = field(default_factory=list)
    given: dict[str, Any] = field(default_factory=dict)  # flag name -> parsed value

    def put(self, key: str, value: Any) -> None:
        self.settings[key] = value


Apply = Callable[[str, Any, Invocation], None]


@dataclass(frozen=True)
class Flag:
    kind: Kind
    apply: Apply


def _setting(key: str, convert: Callable[[Any], Any] = lambda v: v) -> Apply:
    def apply(_: str, value: Any, inv: Invocation) -> None:
        inv.put(key, convert(value))
    return apply


def _note(why: str, when: Callable[[Any], bool] = lambda _: True) -> Apply:
    """Accepted; logged with `why` (only for values `when` says matter)."""
    def apply(name: str, value: Any, inv: Invocation) -> None:
        if when(value):
            inv.notes.append(f"--{name}={_shown(value)}: {why}")
    return apply


def _refuse(why: str, unless: Callable[[Any], bool] = lambda _: False) -> Apply:
    """Refused with `why`, except for the values `unless` accepts (which mean what the picker
    does anyway)."""
    def apply(name: str, value: Any, _: Invocation) -> None:
        if not unless(value):
            raise ConfigError(f"--{name}", f"{_shown(value)!r}: {why}")
    return apply


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _pool_group(name: str, value: Any, inv: Invocation) -> None:
    if value != POOL_GROUP:
        raise ConfigError(f"--{name}", f"{value!r}: the picker follows InferencePools of "
                          f"{POOL_GROUP} (v1) only, as GIE v1.5.0 does")


def _selector(name: str, value: Any, inv: Invocation) -> None:
    """`k=v,k2=v2` (GIE options.go:134-136: key=value pairs only)."""
    labels: dict[str, str] = {}
    for term in filter(None, str(value).split(",")):
        key, eq, label = term.partition("=")
        if not eq or not key or "!" in key or "=" in label:
            raise ConfigError(f"--{name}", f"{value!r}: only key=value pairs, comma-separated")
        labels[key] = label
    if not labels:
        raise ConfigError(f"--{name}", "empty selector")
    inv.put("discovery.kubernetes.selector", {"matchLabels": labels})


def _log_level_v(_: str, value: Any, inv: Invocation) -> None:
    if "zap-log-level" not in inv.given:  # GIE: an explicit zap-log-level wins over -v
        inv.put("log.level", "DEBUG" if value >= _GIE_DEBUG else "INFO")


def _zap_level(name: str, value: Any, inv: Invocation) -> None:
    """zap's names, or an integer n > 0 for verbosity n (debug here)."""
    levels = {"debug": "DEBUG", "info": "INFO", "error": "ERROR"}
    text = str(value).lower()
    if text in levels:
        inv.put("log.level", levels[text])
    elif text.isdigit() and int(text) > 0:
        inv.put("log.level", "DEBUG")
    else:
        raise ConfigError(f"--{name}", f"{value!r}: one of debug, info, error or an integer > 0")


def _encoder(name: str, value: Any, inv: Invocation) -> None:
    formats = {"json": "json", "console": "text"}
    if value not in formats:
        raise ConfigError(f"--{name}", f"{value!r}: one of json, console")
    inv.put("log.format", formats[value])


def _secure_serving(_: str, value: Any, inv: Invocation) -> None:
    # GIE serves ext_proc over TLS by default, with a self-signed certificate unless
    # --cert-path names one (options.go:115, 182-188); gateways dial it with TLS.
    if not value:
        inv.put("extproc.tls", None)


def _cert_path(_: str, value: Any, inv: Invocation) -> None:
    directory = str(value).rstrip("/")  # GIE: tls.crt and tls.key in that directory
    if inv.given.get("secure-serving", True):
            inv.put("extproc.tls", {"cert_file": f"{directory}/tls.crt",
                                    "key_file": f"{directory}/tls.key"})


_DEPRECATED_METRIC = ("deprecated in GIE, which refuses it too (options.go:228-240): name the "
                      "engine with the core-metrics-extractor plugin's defaultEngine instead")

FLAGS: Mapping[str, Flag] = {
    "grpc-port": Flag(Kind.INT, _setting("extproc.port")),
    "grpc-health-port": Flag(Kind.INT, _setting("extproc.health_port")),
    "metrics-port": Flag(Kind.INT, _setting("admin.port")),
    "ha-enable-leader-election": Flag(Kind.BOOL, _note(
        "no leader here: every replica routes and is ready as soon as it can (active-active); "
        "replicas share their prefix picks when `replicas:` is set (LLM_PICKER_REPLICAS__*)",
        when=bool)),
    "pool-group": Flag(Kind.TEXT, _pool_group),
    "pool-namespace": Flag(Kind.TEXT, _setting("discovery.kubernetes.namespace")),
    "pool-name": Flag(Kind.TEXT, _setting("discovery.kubernetes.inference_pool")),
    "endpoint-selector": Flag(Kind.TEXT, _selector),
    "endpoint-target-ports": Flag(Kind.INTS, _setting("discovery.kubernetes.target_ports")),
    "disable-endpoint-subset-filter": Flag(Kind.BOOL, _refuse(
        "the picker always keeps to the gateway's endpoint subset hint", unless=lambda v: not v)),
    "model-server-metrics-scheme": Flag(Kind.TEXT, _refuse(
        "engines are scraped over http", unless=lambda v: v == "http")),
    "model-server-metrics-path": Flag(Kind.TEXT, _refuse(
        "engines are scraped at /metrics", unless=lambda v: v == "/metrics")),
    "model-server-metrics-port": Flag(Kind.INT, _refuse(
        "engines are scraped on their own serving port (deprecated in GIE too)")),
    "model-server-metrics-https-insecure-skip-verify": Flag(Kind.BOOL, _note(
        "engines are scraped over http: no certificate to verify")),
    "refresh-metrics-interval": Flag(Kind.DURATION, _setting("load.interval_secs")),
    "refresh-prometheus-metrics-interval": Flag(Kind.DURATION, _note(
        "the picker's own /metrics are computed at each scrape")),
    "metrics-staleness-threshold": Flag(Kind.DURATION, _setting("load.stale_after_secs")),
    "total-queued-requests-metric": Flag(Kind.TEXT, _refuse(_DEPRECATED_METRIC)),
    "total-running-requests-metric": Flag(Kind.TEXT, _refuse(_DEPRECATED_METRIC)),
    "kv-cache-usage-percentage-metric": Flag(Kind.TEXT, _refuse(_DEPRECATED_METRIC)),
    "lora-info-metric": Flag(Kind.TEXT, _refuse(_DEPRECATED_METRIC)),
    "cache-info-metric": Flag(Kind.TEXT, _refuse(_DEPRECATED_METRIC)),
    "v": Flag(Kind.INT, _log_level_v),
    "zap-devel": Flag(Kind.BOOL, _note("a Go logger option: no effect here")),
    "zap-encoder": Flag(Kind.TEXT, _encoder),
    "zap-log-level": Flag(Kind.TEXT, _zap_level),
    "zap-stacktrace-level": Flag(Kind.TEXT, _note("a Go logger option: no effect here")),
    "zap-time-encoding": Flag(Kind.TEXT, _note("a Go logger option: no effect here")),
    "tracing": Flag(Kind.BOOL, _setting("tracing.enabled")),
    "health-checking": Flag(Kind.BOOL, _note(
        "the gRPC health services are always served (on --grpc-health-port and the ext_proc "
        "port)")),
    "enable-pprof": Flag(Kind.BOOL, _note("a Go profiler: nothing to enable here", when=bool)),
    "cert-path": Flag(Kind.TEXT, _cert_path),
    "enable-cert-reload": Flag(Kind.BOOL, _note(
        "certificates are read at start-up: restart the pod to serve renewed ones", when=bool)),
    "secure-serving": Flag(Kind.BOOL, _secure_serving),
    "metrics-endpoint-auth": Flag(Kind.BOOL, _note(
        "/metrics is served without Kubernetes token review (not implemented here): keep the "
        "metrics port within the cluster (NetworkPolicy); it carries no secrets", when=bool)),
    "config-file": Flag(Kind.TEXT, lambda *_: None),  # read by the caller (plugins.py)
    "config-text": Flag(Kind.TEXT, lambda *_: None),
}

# GIE's defaults that mean something here when the flag is not given (options.go:111-116):
# it traces and guards /metrics unless told not to (secure serving: epp_config's defaults).
_DEFAULTS = {"tracing": True, "metrics-endpoint-auth": True}
# Applied before the others whatever the order given: -v reads whether zap-log-level was given.
_FIRST = ("zap-log-level",)
_SHORTHANDS = {"v": "v"}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_flags(argv: Sequence[str]) -> Invocation:
    """Parse and apply the flags; ConfigError names the flag of any problem."""
    given = _read(argv)
    inv = Invocation(given=given)
    values = {**_DEFAULTS, **given}
    for name in sorted(values, key=lambda name: name not in _FIRST):
        FLAGS[name].apply(name, values[name], inv)
    _check(inv)
    return inv


def _read(argv: Sequence[str]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--") and len(arg) > 2:
            name, eq, text = arg[2:].partition("=")
        elif arg.startswith("-") and len(arg) > 1 and arg[1:2] in _SHORTHANDS:
            name, eq, text = _SHORTHANDS[arg[1]], "=" if len(arg) > 2 else "", arg[2:]
            text = text.removeprefix("=")
        else:
            raise ConfigError(arg, "not a flag: the endpoint picker takes flags only "
                              "(`llm-picker epp --help` lists them)")
        flag = FLAGS.get(name)
        if flag is None:
            raise ConfigError(f"--{name}", "unknown flag (`llm-picker epp --help` lists them; "
                              "the picker's own commands come first: `llm-picker serve ...`)")
        if not eq:
            if flag.kind is Kind.BOOL:
                text = "true"
            elif args:
                text = args.pop(0)
            else:
                raise ConfigError(f"--{name}", f"needs a {flag.kind.value} value")
        given[name] = _value(name, flag.kind, text)
    return given


def _value(name: str, kind: Kind, text: str) -> Any:
    try:
        if kind is Kind.BOOL:
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if kind is Kind.INT:
            return int(text)
        if kind is Kind.INTS:
            return [int(part) for part in text.split(",")] if text else []
        if kind is Kind.DURATION:
            return _seconds(text)
    except ValueError:
        raise ConfigError(f"--{name}", f"{text!r} is not a valid {kind.value}") from None
    return text


def _seconds(text: str) -> float:
    """A Go duration (time.ParseDuration: "50ms", "1m30s", "0") in seconds."""
    if text == "0":
        return 0.0
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(text)
    return sum(float(number) * _DURATION_UNITS[unit]
               for number, unit in _DURATION_PART.findall(text))


def _check(inv: Invocation) -> None:
    """GIE's own checks of the combination (options.go:205-226)."""
    given = inv.given
    if ("pool-name" in given) == ("endpoint-selector" in given):
        raise ConfigError("--pool-name", "set --pool-name or --endpoint-selector (not both)")
    if "endpoint-selector" in given:
        ports = given.get("endpoint-target-ports", [])
        if not 1 <= len(ports) <= 8:
            raise ConfigError("--endpoint-target-ports", "1 to 8 ports with --endpoint-selector")
    if "config-file" in given and "config-text" in given:
        raise ConfigError("--config-text", "set --config-file or --config-text, not both")
