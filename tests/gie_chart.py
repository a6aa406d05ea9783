"""How the Gateway API Inference Extension's `inferencepool` Helm chart (v1.5.0) starts its
endpoint picker container, written out as data and rules: its default values, and what its
templates make of them - the container's args, its probes and ports, and the plugins ConfigMap.

Files, in kubernetes-sigs/gateway-api-inference-extension at v1.5.0:
  V  config/charts/inferencepool/values.yaml
  D  config/charts/epplib/templates/_deployment.yaml (included by the inferencepool chart)
  C  config/charts/epplib/templates/_config.yaml
Template rules kept: Go templates range over a map in sorted key order and print an integer
without a fraction; a YAML list item written `- --flag="x"` is the text with its quotes.
Only the InferencePool mode is written out (the standalone `endpointsServer` mode is another
chart), and the latency predictor off (its plugins have no equivalent in this picker).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

__all__ = ["DEFAULT_VALUES", "HEALTH_PORT", "METRICS_PORT", "EXT_PROC_PORT", "epp_args",
           "plugins_config", "probe_services", "with_values"]

# The keys of V that the epp container's args, probes and ConfigMap read.
DEFAULT_VALUES: dict[str, Any] = {
    "inferenceExtension": {
        "replicas": 1,  # V:2
        "pluginsConfigFile": "default-plugins.yaml",  # V:11
        "flags": {"v": 1},  # V:40-42
        "monitoring": {"prometheus": {"auth": {"enabled": True}}},  # V:74-80
        "tracing": {"enabled": False},  # V:85-86
        "latencyPredictor": {"enabled": False},  # V:93-95
        "metricsDataSource": {"scheme": "http", "path": "/metrics",  # V:99-105
                              "insecureSkipVerify": True},
    },
    "inferencePool": {"modelServerType": "vllm", "modelServerProtocol": "http",  # V:107-112
                      "parser": ""},
}
# D:150-156: the container's ports.
EXT_PROC_PORT, HEALTH_PORT, METRICS_PORT = 9002, 9003, 9090
CONFIG_MOUNT = "/config"  # D:220-222: where the ConfigMap is mounted

# D:100-124: metric flags per model server type (vllm: none). Quotes as the template has them.
_METRIC_FLAGS = {
    "sglang": ['--total-queued-requests-metric="sglang:num_queue_reqs"',
               '--total-running-requests-metric="sglang:num_running_reqs"',
               '--kv-cache-usage-percentage-metric="sglang:token_usage"',
               '--cache-info-metric="sglang:cache_config_info"'],
    "triton-tensorrt-llm": [
        "--total-queued-requests-metric", "nv_trt_llm_request_metrics{request_type=waiting}",
        "--total-running-requests-metric", "nv_trt_llm_request_metrics{request_type=scheduled}",
        "--kv-cache-usage-percentage-metric",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
        "--lora-info-metric", ""],
    "trtllm-serve": ['--total-queued-requests-metric="trtllm_num_requests_waiting"',
                     '--total-running-requests-metric="trtllm_num_requests_running"',
                     '--kv-cache-usage-percentage-metric="trtllm_kv_cache_utilization"',
                     '--cache-info-metric="trtllm_cache_config_info"',
                     '--model-server-metrics-path="/prometheus/metrics"',
                     "--lora-info-metric", ""],
}


def with_values(**changes: Any) -> dict[str, Any]:
    """DEFAULT_VALUES with dotted keys changed, as `helm --set a.b=c` would."""
    values = copy.deepcopy(DEFAULT_VALUES)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def epp_args(values: dict[str, Any], release: str, namespace: str) -> list[str]:
    """The epp container's args (D:75-145)."""
    ext, pool = values["inferenceExtension"], values["inferencePool"]
    assert not ext["latencyPredictor"]["enabled"], "latency predictor rules not written out"
    server_type = pool.get("modelServerType") or "vllm"  # D:77-82
    args = ["--pool-name", release, "--pool-namespace", namespace,  # D:89-96
            "--pool-group", "inference.networking.k8s.io"]
    args += _METRIC_FLAGS.get(server_type, [])  # D:98-125
    args += ["--zap-encoder", "json",  # D:126-129
             "--config-file", f"{CONFIG_MOUNT}/{ext['pluginsConfigFile']}"]
    if int(ext["replicas"]) > 1:  # D:130-132
        args.append("--ha-enable-leader-election")
    for key in sorted(ext.get("flags") or {}):  # D:134-137
        args += [f"--{key}", _go_text(ext["flags"][key])]
    args.append("--tracing=true" if ext["tracing"]["enabled"] else "--tracing=false")  # D:138
    if not ext["monitoring"]["prometheus"]["auth"]["enabled"]:  # D:143-145
        args.append("--metrics-endpoint-auth=false")
    return args


def probe_services(values: dict[str, Any]) -> tuple[str, str]:
    """The gRPC services the liveness and readiness probes check on HEALTH_PORT (D:160-181)."""
    if int(values["inferenceExtension"]["replicas"]) > 1:
        return "liveness", "readiness"
    return "inference-extension", "inference-extension"


def plugins_config(values: dict[str, Any]) -> tuple[str, str]:
    """The ConfigMap's file name and text (C:8-89, latency predictor off)."""
    ext, pool = values["inferenceExtension"], values["inferencePool"]
    protocol = pool.get("modelServerProtocol") or "http"  # C:9-17
    server_type = pool.get("modelServerType") or "vllm"
    parser = ""  # C:18-23
    if server_type.lower() == "vllm" and protocol.lower() == "grpc":
        parser = "vllmgrpc-parser"
    elif pool.get("parser"):
        parser = pool["parser"]
    source = ext["metricsDataSource"]
    extractor: dict[str, Any] = {"type": "core-metrics-extractor"}  # C:35-43
    if server_type != "vllm":
        extractor["parameters"] = {"defaultEngine": server_type}
    plugins: list[dict[str, Any]] = [  # C:26-34
        {"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
        {"type": "metrics-data-source", "parameters": {
            "scheme": source.get("scheme") or "http", "path": source.get("path") or "/metrics",
            "insecureSkipVerify": source.get("insecureSkipVerify", True)}},
        extractor]
    if parser:  # C:44-46
        plugins.append({"type": parser})
    doc: dict[str, Any] = {  # C:24-25, 66-85
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig",
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "queue-scorer", "weight": 2},
            {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
            {"pluginRef": "prefix-cache-scorer", "weight": 3}]}]}
    if parser:  # C:86-89
        doc["parser"] = {"pluginRef": parser}
    return "default-plugins.yaml", yaml.safe_dump(doc, sort_keys=False)


def _go_text(value: Any) -> str:
    """How `"{{ $value }}"` prints a YAML value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
