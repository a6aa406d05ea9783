"""The picker started as the Gateway API Inference Extension's inferencepool chart starts its
endpoint picker (issue 33): the container args rendered from the chart's own default values
(tests/gie_chart.py) with no subcommand, the plugins ConfigMap beside them, the loopback
Kubernetes API server holding the chart's InferencePool, and traffic through real Envoy
(tests/integration/gie.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from picker_bench.loopback import loopback
from tests.gie_chart import CONFIG_MOUNT, epp_args, probe_services, with_values
from tests.integration.conftest import wait_until

pytest.importorskip("kubernetes_asyncio")
from tests.integration.gie import NAMESPACE, RELEASE, chart_picker, routed_through_envoy  # noqa: E402


def test_default_chart_invocation_routes_through_envoy() -> None:
    values = with_values()
    liveness, readiness = probe_services(values)
    with chart_picker(values) as picker:
        # What the chart's probes ask, on the health port (the chart's 9003).
        wait_until(lambda: picker.serving(readiness), 20, "the readiness probe's service")
        assert picker.serving(liveness)
        # The chart's metrics port (9090) serves the picker's metrics.
        metrics = loopback().get(f"http://127.0.0.1:{picker.metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "llm_picker_worker_healthy" in metrics.text
        # The EndpointPickerConfig's profile (queue 2, kv 2, prefix 3) is the policy; the log
        # is JSON lines (--zap-encoder json) naming what the chart's defaults ask that the
        # picker does not do: /metrics behind Kubernetes token review (auth.enabled: true).
        log = picker.process.log_path.read_text()
        assert "policy weighted" in log, log
        assert '"level": "warning"' in log and "--metrics-endpoint-auth=true" in log
        assert routed_through_envoy(picker) <= {"sim-a", "sim-b"}
        decisions = loopback().get(f"http://127.0.0.1:{picker.metrics_port}/metrics").text
        assert 'llm_picker_decisions_total{policy="weighted"' in decisions


def test_two_replicas_invocation_is_active_active() -> None:
    """replicas: 2 adds --ha-enable-leader-election and probes liveness / readiness: this
    replica is ready on its own (no leader here) and says so in its log."""
    values = with_values(inferenceExtension__replicas=2)
    assert "--ha-enable-leader-election" in epp_args(values, RELEASE, NAMESPACE)
    liveness, readiness = probe_services(values)
    with chart_picker(values) as picker:
        wait_until(lambda: picker.serving(readiness), 20, "the readiness probe's service")
        assert picker.serving(liveness)
        assert "--ha-enable-leader-election=true: no leader here" in \
            picker.process.log_path.read_text()


def test_a_plugin_without_an_equivalent_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "custom-plugins.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n- type: lora-affinity-scorer\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
        "  - pluginRef: lora-affinity-scorer\n")
    args = epp_args(with_values(inferenceExtension__pluginsConfigFile=config.name),
                    RELEASE, NAMESPACE)
    args = [arg.replace(f"{CONFIG_MOUNT}/", f"{tmp_path}/") for arg in args]
    done = subprocess.run([sys.executable, "-m", "llm_picker", *args], capture_output=True,
                          text=True, timeout=30, env={"NAMESPACE": NAMESPACE, "PATH": "/bin"})
    assert done.returncode == 2
    assert "plugins: lora-affinity-scorer: no equivalent in this picker" in done.stderr
