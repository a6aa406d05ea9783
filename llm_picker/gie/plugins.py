"""An EndpointPickerConfig (GIE's plugin configuration, the `--config-file` the inferencepool
chart mounts from its ConfigMap) translated into this picker's policy and settings.

GIE schedules with one profile of weighted scorers and a picker: each scorer scores every
endpoint in [0, 1], the profile sums weight x score, the picker takes the best. The picker's
`weighted` policy is that scheme (picker/policies/weighted.py), so a profile maps onto it
scorer by scorer. What has an equivalent here, by GIE v1.5.0 plugin type:

  queue-scorer                  scorer queue (engine's waiting requests; fewer is better)
  running-requests-size-scorer  scorer running
  kv-cache-utilization-scorer   scorer kv (1 - KV-cache usage)
  prefix-cache-scorer           scorer prefix, and the approximate prefix index switched on
                                (its parameters are the index's: GIE creates the index from
                                them, pkg/epp/config/loader/configloader.go:195-209)
  max-score-picker              the weighted policy's best total, ties broken at random;
                                maxNumOfEndpoints n > 1: n - 1 fallbacks (extproc.fallbacks)
  random-picker                 policy random (scores are not read, as in GIE)
  single-profile-handler        one profile is what the picker runs
  metrics-data-source           engines' /metrics over http (the only scheme and path here)
  core-metrics-extractor        defaultEngine vllm or sglang: the engines' metric names
  openai-parser                 the picker parses OpenAI bodies itself

Any other plugin type (filters, LoRA affinity, latency prediction, flow control, ...) is
refused at start-up naming the plugin, as is any parameter not listed for its plugin: a
configuration that asks for a behaviour the picker would not perform must not start.

Differences that remain: GIE's queue scorer normalises between the fleet's shortest and longest
queue, the picker's relative to the longest; an endpoint with no metrics yet scores 0 in GIE,
neutral (0.5) here. Defaults follow GIE's loader (pkg/epp/config/loader/defaults.go): a plugin's
name is its type (110-111), a scorer's weight 1 (41-42), no profile means one profile of every
scorer and picker (151-160), no picker means max-score-picker (179-192).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from picker.errors import ConfigError

__all__ = ["API_VERSION", "DEFAULT_CONFIG", "KIND", "Translation", "translate"]

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
KIND = "EndpointPickerConfig"
_DEFAULT_WEIGHT = 1.0
# GIE's approximate prefix producer counts 4 characters per token (approximateprefix/types.go:
# 111-112); the picker's approximate index cuts characters, so blockSizeTokens n is 4n of them.
_CHARS_PER_TOKEN = 4
_ENGINES = {"vllm": "vllm", "sglang": "sglang"}  # GIE defaultEngine -> picker runtime_type

# GIE's configuration when the flags name none (pkg/epp/config/loader/defaults.go:46-100).
DEFAULT_CONFIG = f"""
apiVersion: {API_VERSION}
kind: {KIND}
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: prefix-cache-scorer, weight: 3}}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{{pluginRef: core-metrics-extractor}}]
"""


@dataclass
class Translation:
    """Settings by dotted key, and notes for the start-up log."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scorers: dict[str, float] = field(default_factory=dict)
    picker: str = "max-score-picker"
    picker_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plugin:
    name: str
    type: str
    params: dict[str, Any]

    @property
    def where(self) -> str:
        named = "" if self.name == self.type else f" {self.name!r}"
        return f"plugins: {self.type}{named}"


_Handler = Callable[[_Plugin, Translation], None]


def _params(plugin: _Plugin, allowed: Mapping[str, type]) -> dict[str, Any]:
    """The plugin's parameters, each known and of its JSON type."""
    for key, value in plugin.params.items():
        kind = allowed.get(key)
        if kind is None:
            known = ", ".join(allowed) or "none"
            raise ConfigError(plugin.where, f"parameter {key!r} has no equivalent here "
                              f"(parameters taken: {known})")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(plugin.where, f"parameter {key!r} must be a {kind.__name__}, "
                              f"not {value!r}")
    return plugin.params


def _prefix(plugin: _Plugin, out: Translation) -> None:
    params = _params(plugin, {"autoTune": bool, "blockSizeTokens": int, "blockSize": int,
                              "maxPrefixBlocksToMatch": int, "maxPrefixTokensToMatch": int,
                              "lruCapacityPerServer": int})
    prefix: dict[str, Any] = {"enabled": True, "index": "approximate"}
    if "autoTune" in params:
        prefix["autotune_capacity"] = params["autoTune"]
    if "lruCapacityPerServer" in params:
        prefix["capacity_blocks"] = params["lruCapacityPerServer"]
    if "blockSizeTokens" in params:
        prefix["block_size"] = params["blockSizeTokens"] * _CHARS_PER_TOKEN
    if "blockSize" in params:  # GIE's deprecated size in characters
        prefix["block_size"] = params["blockSize"]
    for limit in ("maxPrefixBlocksToMatch", "maxPrefixTokensToMatch"):
        if limit in params:
            out.notes.append(f"{plugin.where}: {limit}: the picker matches whole prompts "
                             "(no limit to set)")
    out.settings["prefix"] = prefix


def _picker(plugin: _Plugin, out: Translation) -> None:
    out.picker_params = _params(plugin, {"maxNumOfEndpoints": int})
    out.picker = plugin.type


def _data_source(plugin: _Plugin, out: Translation) -> None:
    params = _params(plugin, {"scheme": str, "path": str, "insecureSkipVerify": bool})
    if params.get("scheme", "http") != "http":
        raise ConfigError(plugin.where, f"scheme {params['scheme']!r}: engines are scraped "
                          "over http here")
    if params.get("path", "/metrics") != "/metrics":
        raise ConfigError(plugin.where, f"path {params['path']!r}: engines are scraped at "
                          "/metrics here")


def _extractor(plugin: _Plugin, out: Translation) -> None:
    params = _params(plugin, {"defaultEngine": str})
    engine = params.get("defaultEngine", "vllm")
    if engine not in _ENGINES:
        raise ConfigError(plugin.where, f"defaultEngine {engine!r}: the picker reads the "
                          f"metrics of {', '.join(_ENGINES)} engines")
    out.settings["discovery.kubernetes.runtime_type"] = _ENGINES[engine]


def _accept(plugin: _Plugin, out: Translation) -> None:
    _params(plugin, {})


@dataclass(frozen=True)
class _Type:
    """A GIE plugin type with an equivalent here: its role in a profile, what its parameters
    set, and for a scorer the picker's scorer (picker/policies/scorers.py SCORERS)."""

    role: str  # "scorer" | "picker" | "other"
    handle: _Handler = _accept
    scorer: str | None = None


_TYPES: Mapping[str, _Type] = {
    "queue-scorer": _Type("scorer", scorer="queue"),
    "running-requests-size-scorer": _Type("scorer", scorer="running"),
    "kv-cache-utilization-scorer": _Type("scorer", scorer="kv"),
    "prefix-cache-scorer": _Type("scorer", _prefix, scorer="prefix"),
    "max-score-picker": _Type("picker", _picker),
    "random-picker": _Type("picker", _picker),
    "single-profile-handler": _Type("other"),
    "metrics-data-source": _Type("other", _data_source),
    "core-metrics-extractor": _Type("other", _extractor),
    "openai-parser": _Type("other"),
}


def translate(text: str, source: str) -> Translation:
    """The EndpointPickerConfig in `text` (from `source`, for errors) as picker settings; a
    ConfigError names the plugin or section that has no equivalent here."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("--config-file", f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError("--config-file", f"{source} must hold an {KIND} mapping")
    _check_header(doc)
    plugins = _plugins(doc.get("plugins"))
    out = Translation()
    for plugin in plugins.values():
        known = _TYPES.get(plugin.type)
        if known is None:
            raise ConfigError(plugin.where, "no equivalent in this picker: remove it, or run "
                              "GIE's own endpoint picker for it")
        known.handle(plugin, out)
    _profile(doc.get("schedulingProfiles"), plugins, out)
    _sections(doc, plugins)
    out.settings["policy"], fallbacks = _policy(out)
    if fallbacks:
        out.settings["extproc.fallbacks"] = fallbacks
    if not out.scorers.get("prefix"):
        out.settings.pop("prefix", None)  # no prefix scorer weighs it: no index to keep
    return out


def _check_header(doc: dict[str, Any]) -> None:
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ConfigError("apiVersion", f"expected {API_VERSION} {KIND}, got "
                          f"{doc.get('apiVersion')!r} {doc.get('kind')!r}")
    known = {"apiVersion", "kind", "plugins", "schedulingProfiles", "featureGates",
             "saturationDetector", "dataLayer", "flowControl", "parser"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(unknown[0], f"not a field of {KIND}")


def _plugins(raw: Any) -> dict[str, _Plugin]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("plugins", "a list of {type, name, parameters} is required")
    plugins: dict[str, _Plugin] = {}
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise ConfigError(f"plugins.{i}", "needs a type")
        unknown = sorted(set(spec) - {"name", "type", "parameters"})
        if unknown:
            raise ConfigError(f"plugins.{i}.{unknown[0]}", "not a field of a plugin")
        name = spec.get("name") or spec["type"]
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"plugins.{i}.parameters", "must be a mapping")
        if name in plugins:
            raise ConfigError(f"plugins.{i}", f"duplicate plugin name {name!r}")
        plugins[name] = _Plugin(name, spec["type"], params)
    return plugins


def _profile(raw: Any, plugins: Mapping[str, _Plugin], out: Translation) -> None:
    """The one scheduling profile's scorers (with weights) and picker."""
    if raw is None or raw == []:
        refs: list[dict[str, Any]] = [{"pluginRef": name} for name, p in plugins.items()
                                      if _TYPES[p.type].role in ("scorer", "picker")]
    elif isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
        refs = raw[0].get("plugins") or []
    else:
        raise ConfigError("schedulingProfiles", "the picker runs one scheduling profile; "
                          "several (prefill/decode and the like) have no equivalent here")
    pickers = 0
    for i, ref in enumerate(refs):
        name = ref.get("pluginRef") if isinstance(ref, dict) else None
        plugin = plugins.get(name) if isinstance(name, str) else None
        if plugin is None:
            raise ConfigError(f"schedulingProfiles.0.plugins.{i}",
                              f"pluginRef {name!r} names no plugin")
        weight = ref.get("weight", _DEFAULT_WEIGHT)
        known = _TYPES[plugin.type]
        if known.scorer is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"schedulingProfiles.0.plugins.{i}.weight",
                                  f"must be a number >= 0, not {weight!r}")
            out.scorers[known.scorer] = out.scorers.get(known.scorer, 0.0) + float(weight)
        elif known.role == "picker":
            pickers += 1
        else:
            raise ConfigError(f"schedulingProfiles.0.plugins.{i}", f"{plugin.type} is not a "
                              "scorer or picker")
    if pickers > 1:
        raise ConfigError("schedulingProfiles.0.plugins", "one picker per profile")


def _sections(doc: dict[str, Any], plugins: Mapping[str, _Plugin]) -> None:
    """The optional top-level sections: those with an equivalent, or absent/empty."""
    for section in ("featureGates", "saturationDetector", "flowControl"):
        if doc.get(section):
            raise ConfigError(section, "no equivalent in this picker (its admission and "
                              "limits are the picker's `limits:` settings)")
    parser = doc.get("parser")
    if parser and plugins.get(str(parser.get("pluginRef"))) is None:
        raise ConfigError("parser.pluginRef", "names no plugin")
    data_layer = doc.get("dataLayer")
    for i, source in enumerate((data_layer or {}).get("sources") or []):
        refs = [source.get("pluginRef")] + [e.get("pluginRef")
                                            for e in source.get("extractors") or []]
        for ref in refs:
            if ref not in plugins:
                raise ConfigError(f"dataLayer.sources.{i}", f"pluginRef {ref!r} names no "
                                  "plugin")


def _policy(out: Translation) -> tuple[dict[str, Any], int]:
    """The picker's policy, and the fallbacks a picker asking for several endpoints means."""
    wanted = out.picker_params.get("maxNumOfEndpoints", 1)
    if wanted < 1:
        raise ConfigError(f"plugins: {out.picker}", "maxNumOfEndpoints must be at least 1")
    if out.picker == "random-picker":
        if out.scorers:
            out.notes.append("random-picker: the scorers' weights are not read (as in GIE)")
        return {"name": "random"}, wanted - 1
    if not any(out.scorers.values()):
        raise ConfigError("schedulingProfiles", "no scorer with a weight above 0: the "
                          "max-score picker would have nothing to compare")
    return {"name": "weighted", "params": {"scorers": dict(out.scorers)}}, wanted - 1
