"""deploy/helm/llm-picker rendered by Helm itself: its Go SDK (v4) through the helm-python-sdk
wheel (the `helm` extra; no `helm` binary is installable here: Debian has none, and PyPI's only
real renderer is that wheel).

With default values the chart renders deploy/base object for object (the picker YAML in the
ConfigMap compared as data; the Deployment's checksum/config annotation is what only Helm can
add). Every values combination renders manifests of known kinds and fields whose picker YAML
starts as `serve` would start it, with the environment the Deployment gives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="the `helm` extra (helm-python-sdk)")
pytest.importorskip("kubernetes_asyncio.client.models")

from picker.config import config_from_data  # noqa: E402
from tests.k8s_models import check_manifest  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "llm-picker"
HELM_ONLY = "checksum/config"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values or {}, name="llm-picker", namespace="inference",
                            is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text)
            if isinstance(doc, dict)]


def comparable(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """By kind and name, the ConfigMap's picker YAML parsed, Helm's own annotation left out."""
    out = {}
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        if doc["kind"] == "ConfigMap" and "picker.yaml" in doc["data"]:
            doc["data"]["picker.yaml"] = yaml.safe_load(doc["data"]["picker.yaml"])
        if doc["kind"] == "Deployment":
            template = doc["spec"]["template"]["metadata"]
            template.get("annotations", {}).pop(HELM_ONLY, None)
            if not template.get("annotations"):
                template.pop("annotations", None)
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def base() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((DEPLOY / "base" / name).read_text())]


def test_default_values_render_the_kustomize_base() -> None:
    assert comparable(render()) == comparable(base())


def _picker_env(deployment: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes would give it (Secrets from `secrets`)."""
    env = {}
    for var in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["name"]]
    return env


@pytest.mark.parametrize("values", [
    {},
    {"replicas": 3},
    {"replicas": 2, "sharePicks": {"enabled": False}},
    {"tls": {"enabled": True}},
    {"policy": {"name": "weighted", "params": {"scorers": {"queue": 2, "prefix": 3}}},
     "discovery": {"dns": {"name": "vllm.inference.svc.cluster.local", "port": 8000},
                   "kubernetes": None},
     "inferencePool": {"create": False}, "httpRoute": {"create": False}},
    {"prefix": {"enabled": False}, "policy": {"name": "least_load"},
     "extraConfig": {"limits": {"max_concurrent_requests": 64}, "log": {"format": "json"}}},
    {"metrics": {"serviceMonitor": {"enabled": True}}, "admin": {"readTokenSecret": "reader"},
     "dashboard": {"enabled": True}},
])
def test_values_render_manifests_the_picker_starts_with(values: dict[str, Any],
                                                        tmp_path: Path) -> None:
    docs = render(values)
    for doc in docs:
        check_manifest(doc, f"{doc['kind']}/{doc['metadata']['name']}")
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = by_kind[("Deployment", "llm-picker")]
    env = _picker_env(deployment, {"llm-picker-admin": "admin-token-from-secret",
                                   "reader": "read-token-from-secret"})
    data = yaml.safe_load(by_kind[("ConfigMap", "llm-picker")]["data"]["picker.yaml"])
    for name in ("tls.crt", "tls.key"):  # where the Secret's files are mounted
        (tmp_path / name).write_text("x")
    env = {k: v.replace("/etc/llm-picker-tls", str(tmp_path)) for k, v in env.items()}
    if "replicas" in data:
        (tmp_path / "secret").write_text("a-shared-secret-of-32-characters")
        data["replicas"]["secret_file"] = str(tmp_path / "secret")
    config = config_from_data(data, env)
    assert deployment["spec"]["replicas"] == values.get("replicas", 1)
    sharing = values.get("replicas", 1) > 1 and values.get("sharePicks", {}).get("enabled", True)
    assert (config.replicas is not None) == sharing == (("Service", "llm-picker-peers") in by_kind)
    if sharing:
        assert config.replicas is not None and config.replicas.dns is not None
        assert config.replicas.dns.name == "llm-picker-peers.inference.svc.cluster.local"
        assert env["PYTHONHASHSEED"]
    if values.get("tls", {}).get("enabled"):
        assert config.extproc.tls is not None
        service = by_kind[("Service", "llm-picker")]
        assert "appProtocol" not in service["spec"]["ports"][0]
    if values.get("dashboard", {}).get("enabled"):
        dashboard = by_kind[("ConfigMap", "llm-picker-dashboard")]
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["data"]["llm-picker.json"] == \
            (DEPLOY / "grafana" / "llm-picker.json").read_text()
    if "readTokenSecret" in values.get("admin", {}):
        assert config.admin.read_token is not None
        monitor = by_kind[("ServiceMonitor", "llm-picker")]
        assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "reader"
    assert config.policy.name == values.get("policy", {}).get("name", "cache_aware")
