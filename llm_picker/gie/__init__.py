"""`llm-picker epp`: the picker started the way the Gateway API Inference Extension's
`inferencepool` Helm chart starts its endpoint picker, so that chart installs this picker with
only its image changed.

The chart runs the container's entrypoint with GIE's flags and no subcommand, so
`llm-picker --pool-name ...` means `llm-picker epp --pool-name ...` (llm_picker.cli). The flags
(flags.py) and the EndpointPickerConfig they name (plugins.py) become picker settings, over
GIE's defaults for what the flags leave out (pkg/epp/server/options.go:93-118): ext_proc on
9002 with a self-signed certificate, the gRPC health services on 9003 (where the chart's probes
go; plaintext, as kubelet gRPC probes are), /metrics on 9090 (the picker's admin port). Then,
as for `serve`, LLM_PICKER_* variables override any setting: the chart's
`inferenceExtension.env` reaches what no GIE flag names (replicas:, limits:, an admin token).

The admin API shares the metrics port: without LLM_PICKER_ADMIN__TOKEN, its changes are
refused (a token nobody knows is generated) while /metrics, /ready and the reads stay open.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from llm_picker.gie.flags import FLAGS, parse_flags
from llm_picker.gie.plugins import DEFAULT_CONFIG, translate
from picker.config import PickerConfig, config_from_data
from picker.errors import ConfigError

__all__ = ["epp_config", "usage"]

_TOKEN_ENV = "LLM_PICKER_ADMIN__TOKEN"


def epp_config(argv: Sequence[str], env: Mapping[str, str]) -> tuple[PickerConfig, list[str]]:
    """The picker configuration GIE's flags `argv` ask for, and notes to log at start-up (the
    flags and plugin parameters accepted that change nothing here)."""
    invocation = parse_flags(argv)
    given = invocation.given
    text, source = _plugin_config(given)
    translation = translate(text, source)
    data: dict[str, Any] = {
        "extproc": {"host": "0.0.0.0", "port": 9002, "health_port": 9003, "tls": "self_signed"},
        "admin": {"host": "0.0.0.0", "port": 9090},
        "discovery": {"kubernetes": {}},
        # The chart gives 130 s to terminate: 5 s for gateways to stop sending, then drain.
        "limits": {"shutdown_delay_secs": 5.0},
    }
    for settings in (translation.settings, invocation.settings):
        for key, value in settings.items():
            _put(data, key, value)
    kubernetes = data["discovery"]["kubernetes"]
    if "namespace" not in kubernetes and env.get("NAMESPACE"):
        kubernetes["namespace"] = env["NAMESPACE"]  # set by the chart from the pod's own
    notes = invocation.notes + translation.notes
    if not env.get(_TOKEN_ENV):
        data["admin"]["token"] = secrets.token_urlsafe(32)
        notes.append(f"admin API on the metrics port: changes refused (set {_TOKEN_ENV}, e.g. "
                     "through the chart's inferenceExtension.env, to allow them)")
    return config_from_data(data, env), notes


def _plugin_config(given: Mapping[str, Any]) -> tuple[str, str]:
    """The EndpointPickerConfig's text and where it came from (GIE's default without one)."""
    if "config-text" in given:
        return str(given["config-text"]), "--config-text"
    path = given.get("config-file")
    if path is None:
        return DEFAULT_CONFIG, "GIE's default configuration"
    try:
        with open(path, encoding="utf-8") as file:
            return file.read(), str(path)
    except OSError as exc:
        raise ConfigError("--config-file", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("--config-file", f"{path} is not UTF-8 text: {exc.reason} at byte "
                          f"{exc.start}") from exc


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def usage() -> str:
    """`llm-picker epp --help`: the flags taken; what each means here is in the README."""
    listed = "\n".join(f"  --{name} {flag.kind.value}" for name, flag in sorted(FLAGS.items()))
    return ("usage: llm-picker [epp] --pool-name NAME [--flag value ...]\n\n"
            "The Gateway API Inference Extension endpoint picker's flags (v1.5.0), as its\n"
            "inferencepool Helm chart passes them; README, Install in Kubernetes, says what\n"
            "each does here.\n\n" + listed)
