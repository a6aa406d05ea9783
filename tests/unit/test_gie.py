"""llm_picker.gie: GIE's endpoint picker flags and EndpointPickerConfig as picker settings.

The chart's own invocation (tests/gie_chart.py renders it from the chart's default values) is
checked against a render by real Helm, then each flag rule and plugin mapping table-driven.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_picker.gie import epp_config
from llm_picker.gie.plugins import translate
from llm_picker.ports import check_ports
from picker.errors import ConfigError
from tests.gie_chart import (
    EXT_PROC_PORT,
    HEALTH_PORT,
    METRICS_PORT,
    epp_args,
    plugins_config,
    with_values,
)

# `helm template vllm-llama3-8b --namespace ns --set inferencePool.modelServers.matchLabels.
# app=vllm-llama3-8b` of GIE v1.5.0's config/charts/inferencepool (Helm SDK v4.2.3, through
# the helm-python-sdk wheel), the epp container's args: what tests/gie_chart.py must match.
HELM_RENDERED = ["--pool-name", "vllm-llama3-8b", "--pool-namespace", "ns", "--pool-group",
                 "inference.networking.k8s.io", "--zap-encoder", "json", "--config-file",
                 "/config/default-plugins.yaml", "--v", "1", "--tracing=false"]
HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def chart_config(tmp_path: Path, values: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> Any:
    values = values or with_values()
    name, text = plugins_config(values)
    (tmp_path / name).write_text(text)
    args = [a.replace("/config/", f"{tmp_path}/") for a in epp_args(values, "pool", "ns")]
    return epp_config(args, env or {})


def test_the_rules_render_what_helm_renders() -> None:
    assert epp_args(with_values(), "vllm-llama3-8b", "ns") == HELM_RENDERED
    two = epp_args(with_values(inferenceExtension__replicas=2), "vllm-llama3-8b", "ns")
    assert two == HELM_RENDERED[:10] + ["--ha-enable-leader-election"] + HELM_RENDERED[10:]


def test_the_default_chart_means_gie_ports_tls_and_its_profile(tmp_path: Path) -> None:
    config, notes = chart_config(tmp_path)
    assert (config.extproc.port, config.extproc.health_port, config.admin.port) == \
        (EXT_PROC_PORT, HEALTH_PORT, METRICS_PORT)
    assert config.extproc.host == config.admin.host == "0.0.0.0"
    assert config.extproc.tls == "self_signed"  # GIE's --secure-serving defaults to true
    assert config.policy.name == "weighted"
    assert config.policy.params == {"scorers": {"queue": 2.0, "kv": 2.0, "prefix": 3.0}}
    assert config.prefix.enabled and config.prefix.index == "approximate"
    pool = config.discovery.kubernetes
    assert (pool.inference_pool, pool.namespace, pool.runtime_type) == ("pool", "ns", "vllm")
    assert (config.log.format, config.log.level) == ("json", "INFO")
    assert config.admin.token is not None  # nobody knows it: changes refused
    assert any(n.startswith("--metrics-endpoint-auth=true") for n in notes)
    assert any("changes refused" in n for n in notes)
    check_ports(config, 1, None)


def test_admin_token_and_namespace_from_the_environment(tmp_path: Path) -> None:
    name, text = plugins_config(with_values())
    (tmp_path / name).write_text(text)
    config, notes = epp_config(["--pool-name", "p", "--config-file", str(tmp_path / name)],
                               {"NAMESPACE": "team-a", "LLM_PICKER_ADMIN__TOKEN": "s3cret-token"})
    assert config.discovery.kubernetes.namespace == "team-a"
    assert config.admin.token.get_secret_value() == "s3cret-token"
    assert not any("changes refused" in n for n in notes)


@pytest.mark.parametrize("flags, key, expected", [
    (["--v", "4"], "log.level", "DEBUG"),
    (["-v=1", "--zap-log-level", "error"], "log.level", "ERROR"),
    (["--zap-encoder=console"], "log.format", "text"),
    (["--secure-serving=false"], "extproc.tls", None),
    (["--secure-serving=F", "--cert-path", "/certs"], "extproc.tls", None),
    (["--grpc-port=7000", "--grpc-health-port", "7001"], "extproc.health_port", 7001),
    (["--metrics-port", "7002"], "admin.port", 7002),
    (["--refresh-metrics-interval", "250ms"], "load.interval_secs", 0.25),
    (["--metrics-staleness-threshold=1m30s"], "load.stale_after_secs", 90.0),
    (["--pool-namespace", "x", "--pool-namespace", "y"], "discovery.kubernetes.namespace", "y"),
])
def test_flag_settings(flags: list[str], key: str, expected: Any) -> None:
    config, _ = epp_config(["--pool-name", "p", "--pool-namespace", "ns", *flags], {})
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected


def test_cert_path_serves_its_files(tmp_path: Path) -> None:
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    config, _ = epp_config(["--pool-name", "p", "--pool-namespace", "ns",
                            "--cert-path", f"{tmp_path}/"], {})
    assert config.extproc.tls.cert_file == tmp_path / "tls.crt"


def test_endpoint_selector_instead_of_a_pool() -> None:
    config, _ = epp_config(["--endpoint-selector", "app=vllm,tier=gpu", "--pool-namespace", "ns",
                            "--endpoint-target-ports", "8000,8001"], {})
    pool = config.discovery.kubernetes
    assert pool.selector.match_labels == {"app": "vllm", "tier": "gpu"}
    assert pool.target_ports == [8000, 8001] and pool.inference_pool is None


@pytest.mark.parametrize("flags, key, words", [
    (["--bogus", "1"], "--bogus", "unknown flag"),
    (["serve"], "serve", "not a flag"),
    (["--tracing=yes"], "--tracing", "not a valid bool"),
    (["--grpc-port"], "--grpc-port", "needs a int value"),
    (["--pool-group", "inference.networking.x-k8s.io"], "--pool-group", "v1"),
    (['--total-queued-requests-metric="sglang:num_queue_reqs"'],
     "--total-queued-requests-metric", "deprecated"),
    (["--model-server-metrics-path", "/prometheus/metrics"], "--model-server-metrics-path",
     "/metrics"),
    (["--disable-endpoint-subset-filter"], "--disable-endpoint-subset-filter", "subset"),
    (["--refresh-metrics-interval", "5"], "--refresh-metrics-interval", "duration"),
    (["--endpoint-selector", "app=vllm"], "--pool-name", "not both"),
    (["--config-file", "/nowhere.yaml"], "--config-file", "cannot read"),
])
def test_refused_flags_name_themselves(flags: list[str], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        epp_config(["--pool-name", "p", "--pool-namespace", "ns", *flags], {})
    assert caught.value.key == key
    assert words in str(caught.value)


def test_a_config_file_of_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text") as caught:
        epp_config(["--pool-name", "p", "--config-file", str(binary)], {})
    assert caught.value.key == "--config-file"


def test_accepted_flags_without_an_effect_are_noted() -> None:
    _, notes = epp_config(["--pool-name", "p", "--pool-namespace", "ns", "--enable-pprof",
                           "--zap-devel", "--ha-enable-leader-election"], {})
    named = {note.split("=", 1)[0] for note in notes}
    assert {"--enable-pprof", "--zap-devel", "--ha-enable-leader-election"} <= named


@pytest.mark.parametrize(("flags", "enabled"), [
    ([], True), (["--tracing"], True), (["--tracing=false"], False)])
def test_tracing_is_gies_default_and_its_flag_switches_it(flags: list[str],
                                                           enabled: bool) -> None:
    """GIE traces unless told not to (options.go's default); the chart passes the flag."""
    config, notes = epp_config(["--pool-name", "p", "--pool-namespace", "ns", *flags], {})
    assert config.tracing.enabled is enabled
    assert not [note for note in notes if note.startswith("--tracing")]


def plugins(plugin_list: str, profile: str = "") -> str:
    return HEADER + "plugins:\n" + plugin_list + (
        f"schedulingProfiles:\n- name: default\n  plugins:\n{profile}" if profile else "")


@pytest.mark.parametrize("text, expected", [
    # No profile: every scorer and picker, weight 1 (GIE loader defaults).
    (plugins("- type: queue-scorer\n- type: running-requests-size-scorer\n"),
     {"policy": {"name": "weighted", "params": {"scorers": {"queue": 1.0, "running": 1.0}}}}),
    # Two plugins of one type under their own names add up.
    (plugins("- {name: q1, type: queue-scorer}\n- {name: q2, type: queue-scorer}\n",
             "  - {pluginRef: q1, weight: 2}\n  - {pluginRef: q2}\n"),
     {"policy": {"name": "weighted", "params": {"scorers": {"queue": 3.0}}}}),
    (plugins("- type: kv-cache-utilization-scorer\n"
             "- {type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}\n"),
     {"policy": {"name": "weighted", "params": {"scorers": {"kv": 1.0}}},
      "extproc.fallbacks": 2}),
    (plugins("- type: queue-scorer\n- type: random-picker\n"), {"policy": {"name": "random"}}),
    (plugins("- {type: prefix-cache-scorer, parameters: {blockSizeTokens: 16, autoTune: false,"
             " lruCapacityPerServer: 1000}}\n"),
     {"policy": {"name": "weighted", "params": {"scorers": {"prefix": 1.0}}},
      "prefix": {"enabled": True, "index": "approximate", "block_size": 64,
                 "autotune_capacity": False, "capacity_blocks": 1000}}),
    (plugins("- type: queue-scorer\n- {type: core-metrics-extractor, parameters: "
             "{defaultEngine: sglang}}\n- type: single-profile-handler\n- type: openai-parser\n"),
     {"policy": {"name": "weighted", "params": {"scorers": {"queue": 1.0}}},
      "discovery.kubernetes.runtime_type": "sglang"}),
])
def test_plugin_mappings(text: str, expected: dict[str, Any]) -> None:
    assert translate(text, "test").settings == expected


@pytest.mark.parametrize("text, key, words", [
    (plugins("- type: lora-affinity-scorer\n"), "plugins: lora-affinity-scorer", "no equivalent"),
    (plugins("- {name: strict, type: prefix-cache-affinity-filter}\n"),
     "plugins: prefix-cache-affinity-filter 'strict'", "no equivalent"),
    (plugins("- type: weighted-random-picker\n"), "plugins: weighted-random-picker",
     "no equivalent"),
    (plugins("- {type: queue-scorer, parameters: {threshold: 3}}\n"), "plugins: queue-scorer",
     "'threshold'"),
    (plugins("- {type: metrics-data-source, parameters: {scheme: https}}\n- type: queue-scorer\n"),
     "plugins: metrics-data-source", "http"),
    (plugins("- {type: core-metrics-extractor, parameters: {defaultEngine: trtllm-serve}}\n"),
     "plugins: core-metrics-extractor", "trtllm-serve"),
    (plugins("- type: queue-scorer\n", "  - {pluginRef: nope}\n"),
     "schedulingProfiles.0.plugins.0", "names no plugin"),
    (plugins("- type: queue-scorer\n", "  - {pluginRef: queue-scorer, weight: '2'}\n"),
     "schedulingProfiles.0.plugins.0.weight", ">= 0"),
    (plugins("- type: queue-scorer\n- type: queue-scorer\n"), "plugins.1", "duplicate"),
    (plugins("- type: queue-scorer\n") + "schedulingProfiles: [{name: a}, {name: b}]\n",
     "schedulingProfiles", "one scheduling profile"),
    (plugins("- type: queue-scorer\n") + "featureGates: [flowControl]\n", "featureGates",
     "no equivalent"),
    (plugins("- type: max-score-picker\n"), "schedulingProfiles", "no scorer"),
    ("apiVersion: v1\nkind: ConfigMap\n", "apiVersion", "EndpointPickerConfig"),
])
def test_plugin_refusals_name_the_plugin(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        translate(text, "test")
    assert caught.value.key == key
    assert words in str(caught.value)


def test_gie_default_configuration_without_a_config_file() -> None:
    config, _ = epp_config(["--pool-name", "p", "--pool-namespace", "ns"], {})
    assert config.policy.params == {"scorers": {"queue": 2.0, "kv": 2.0, "prefix": 3.0}}


def test_health_port_collisions_are_refused(tmp_path: Path) -> None:
    config, _ = chart_config(tmp_path)
    clash = config.model_copy(update={"extproc": config.extproc.model_copy(
        update={"health_port": METRICS_PORT})})
    with pytest.raises(ConfigError, match="admin.port"):
        check_ports(clash, 1, None)
    assert yaml.safe_load(plugins_config(with_values())[1])["kind"] == "EndpointPickerConfig"
