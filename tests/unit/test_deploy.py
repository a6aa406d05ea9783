"""deploy/: every manifest parses into the Kubernetes API's own types (kubernetes_asyncio's
models, generated from the API's OpenAPI: unknown fields are errors here), the InferencePool is
one the picker follows, RBAC is exactly what discovery needs, and the picker YAML inside the
ConfigMap is valid for `llm-picker serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kubernetes_asyncio.client.models")

from picker.config import load_config  # noqa: E402
from picker.fleet.sources.pods import pool_target  # noqa: E402
from tests.k8s_models import CORE, check_manifest  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HELM = DEPLOY / "helm"  # templates, not manifests: tests/unit/test_helm_chart.py renders them


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if HELM in path.parents:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            found.append((path, doc))
    return found


DOCS = _documents()


def test_every_manifest_is_a_known_kind_with_known_fields() -> None:
    assert DOCS
    for path, doc in DOCS:
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = str(path.relative_to(DEPLOY))
        if key[1] == "Kustomization":
            for entry in doc.get("resources", []) + [p["path"] for p in doc.get("patches", [])
                                                      if "path" in p]:
                assert (path.parent / entry).exists(), f"{where}: {entry} missing"
        else:
            check_manifest(doc, where)


async def test_full_manifests_deserialize_into_the_client_models() -> None:
    """The client's own deserializer, with client-side validation (required fields, enums)."""
    import json
    from types import SimpleNamespace

    from kubernetes_asyncio.client import ApiClient

    async with ApiClient() as client:
        for path, doc in DOCS:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CORE and "overlays" not in path.parts:  # overlays hold partial patches
                obj = client.deserialize(SimpleNamespace(data=json.dumps(doc)), CORE[key])
                assert obj.metadata.name, path


def _one(kind: str) -> dict[str, Any]:
    docs = [d for p, d in DOCS if d["kind"] == kind and "overlays" not in p.parts
            and "gateways" not in p.parts]
    assert len(docs) == 1, kind
    return docs[0]


def test_rbac_is_read_only_on_pods_inferencepools_and_objectives() -> None:
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
             for r in _one("Role")["rules"]}
    assert rules == {(("",), ("pods",)): ["get", "list", "watch"],
                     (("inference.networking.k8s.io",), ("inferencepools",)):
                         ["get", "list", "watch"],
                     (("inference.networking.x-k8s.io",), ("inferenceobjectives",)):
                         ["get", "list", "watch"]}
    assert _one("RoleBinding")["subjects"][0]["name"] == _one("ServiceAccount")["metadata"]["name"]


def test_the_pool_is_followable_and_points_at_the_picker(tmp_path: Path) -> None:
    pool = _one("InferencePool")
    assert pool_target(pool).ports == (8000,)
    service = _one("Service")
    assert pool["spec"]["endpointPickerRef"]["name"] == service["metadata"]["name"]
    ext_proc = service["spec"]["ports"][0]
    assert ext_proc["appProtocol"] == "kubernetes.io/h2c"
    assert ext_proc["port"] == pool["spec"]["endpointPickerRef"]["port"]["number"]

    path = tmp_path / "picker.yaml"
    path.write_text(_one("ConfigMap")["data"]["picker.yaml"])
    config = load_config(path, env={"LLM_PICKER_ADMIN__TOKEN": "secret-from-the-secret"})
    assert config.discovery.kubernetes is not None
    assert config.discovery.kubernetes.inference_pool == pool["metadata"]["name"]
    assert config.extproc.port == ext_proc["port"]
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {p["containerPort"] for p in container["ports"]} == {config.extproc.port,
                                                                config.admin.port}
