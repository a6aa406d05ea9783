"""`llm-picker check-config FILE...`: validate configurations without starting anything.

For CI and for a ConfigMap before `kubectl apply`: a file is either the picker's own YAML, or
Kubernetes manifests (one or many documents) whose ConfigMaps hold it under a `data` key ending
in .yaml/.yml, as deploy/base/configmap.yaml does. Each configuration is checked as `serve`
would check it at start-up (environment variables included, as serve applies them), port
collisions too; the first problem of each is printed naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from llm_picker.ports import check_ports  # the same port checks serve runs
from picker.config import CONFIG_ENV, ENV_PREFIX, PickerConfig, config_from_data, read_config_text
from picker.errors import ConfigError
from picker.replicas.settings import check_hash_seed

__all__ = ["check_files"]

_CONFIG_SUFFIXES = (".yaml", ".yml")


def check_files(paths: list[str], env: Mapping[str, str]) -> list[tuple[bool, str]]:
    """(passed, line) per configuration found: OK with a summary, or the error; then a note
    naming the environment variables that took part, if any did."""

    lines: list[tuple[bool, str]] = []
    for path in paths:
        try:
            found = list(_configurations(path))
        except ConfigError as exc:
            lines.append((False, f"{path}: configuration error: {exc}"))
            continue
        for source, data in found:
            try:
                config = config_from_data(data, env)
                check_ports(config, workers=1, authz_port=None)
                if config.replicas is not None:
                    check_hash_seed(env)
            except ConfigError as exc:
                lines.append((False, f"{source}: configuration error: {exc}"))
            else:
                lines.append((True, f"{source}: OK ({_summary(config)})"))
    used = sorted(name for name in env if name.startswith(ENV_PREFIX) and name != CONFIG_ENV)
    if used:
        lines.append((True, f"(checked with the environment's {', '.join(used)}, as serve "
                            "applies them)"))
    return lines


def _configurations(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, the configuration mapping) for each configuration the file holds."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from exc
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        documents = []  # read_config_text names where the YAML breaks
    manifests = [d for d in documents if isinstance(d, dict) and "kind" in d
                 and "apiVersion" in d]
    if not manifests:
        yield path, read_config_text(text, path)
        return
    maps = [m for m in manifests if m["kind"] == "ConfigMap"]
    for manifest in maps:
        for field in ("data", "metadata"):
            if not isinstance(manifest.get(field) or {}, dict):
                raise ConfigError("config", f"{path}: a ConfigMap's {field} must be a "
                                  f"mapping, not {type(manifest[field]).__name__}")
    entries = [(m, key) for m in maps for key in sorted(m.get("data") or {}, key=str)
               if str(key).endswith(_CONFIG_SUFFIXES)]
    if not entries:
        kinds = ", ".join(sorted({str(m["kind"]) for m in manifests}))
        raise ConfigError("config", f"{path} holds Kubernetes manifests ({kinds}) but no "
                          "ConfigMap with a data key ending in .yaml or .yml")
    for manifest, key in entries:
        name = str((manifest.get("metadata") or {}).get("name", "?"))
        source = f"{path}: ConfigMap {name}, data.{key}"
        value = manifest["data"][key]
        if not isinstance(value, str):
            raise ConfigError("config", f"{source} must be text (a YAML file as a string)")
        yield source, read_config_text(value, source)


def _summary(config: PickerConfig) -> str:
    found_by = {"kubernetes": config.discovery.kubernetes, "dns": config.discovery.dns}
    sources = [name for name, settings in found_by.items() if settings is not None]
    parts = [f"policy {config.policy.name}", f"{len(config.workers)} declared workers"]
    if sources:
        parts.append(f"discovery: {', '.join(sources)}")
    elif not config.workers:
        parts.append("no workers and no discovery: under serve, add workers through the admin "
                     "API; under LiteLLM, its deployments are the workers")
    if config.prefix.enabled:
        parts.append(f"prefix index {config.prefix.index}")
    if config.enable_igw:
        parts.append("prefill/decode (enable_igw)")
    return "; ".join(parts)
