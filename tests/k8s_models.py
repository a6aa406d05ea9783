"""Manifests checked against the Kubernetes API's own types: kubernetes_asyncio's models,
generated from the API's OpenAPI, where an unknown field is an error all the way down. Kinds
from CRDs (Gateway API, GIE, Istio, Prometheus Operator) are checked for their top-level shape.
Shared by the kustomize manifests' test and the Helm chart's."""

from __future__ import annotations

import re
from typing import Any

from kubernetes_asyncio.client import models

__all__ = ["CORE", "CRDS", "check_fields", "check_manifest"]

CORE = {("v1", "ServiceAccount"): "V1ServiceAccount", ("v1", "ConfigMap"): "V1ConfigMap",
        ("v1", "Service"): "V1Service", ("apps/v1", "Deployment"): "V1Deployment",
        ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
        ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget"}
CRDS = {("inference.networking.k8s.io/v1", "InferencePool"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor")}


def check_fields(value: Any, type_name: str, where: str) -> None:
    """`value` fits the generated model `type_name`: every key is a field of it, all the way
    down (the models' openapi_types / attribute_map)."""
    if value is None:
        return
    listed = re.fullmatch(r"list\[(.+)\]", type_name)
    mapped = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if listed:
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            check_fields(item, listed.group(1), f"{where}[{i}]")
    elif mapped:
        assert isinstance(value, dict), where
        for key, item in value.items():
            check_fields(item, mapped.group(1), f"{where}.{key}")
    elif hasattr(models, type_name):
        model = getattr(models, type_name)
        fields = {json: attr for attr, json in model.attribute_map.items()}
        assert isinstance(value, dict), f"{where}: expected an object"
        for key, item in value.items():
            assert key in fields, f"{where}: {key!r} is not a field of {type_name}"
            check_fields(item, model.openapi_types[fields[key]], f"{where}.{key}")


def check_manifest(doc: dict[str, Any], where: str) -> None:
    """A core kind's fields, or a CRD kind's top-level shape."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CORE:
        check_fields(doc, CORE[key], where)
    else:
        assert key in CRDS, f"{where}: unexpected kind {key}"
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, where
