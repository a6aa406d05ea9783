"""Pure translation of Kubernetes objects (JSON as the API serves them) into workers.

No client library here: the watch loop hands raw objects in, tests hand dicts in. A pod is a
worker once it is Ready, has an IP and is not terminating - the same test an EndpointSlice
controller applies, so the picker never routes where a Service would not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from picker.fleet.sources.settings import APP_PROTOCOLS, KubernetesSettings
from picker.fleet.worker_spec import WorkerSpec

__all__ = [
    "PoolTarget", "pod_ready", "pool_target", "selector_string", "settings_target",
    "worker_specs",
]

log = logging.getLogger("llm_picker.sources.kubernetes")


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """What to watch and where to connect: the pool's selector, ports and protocol."""

    match_labels: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]
    app_protocol: str = "http"


def settings_target(settings: KubernetesSettings) -> PoolTarget:
    """The target given by a selector in the configuration (no InferencePool)."""
    assert settings.selector is not None
    return PoolTarget(tuple(sorted(settings.selector.match_labels.items())),
                      tuple(settings.target_ports))


def pool_target(pool: Mapping[str, Any]) -> PoolTarget:
    """An `inference.networking.k8s.io/v1` InferencePool's target; ValueError names the field
    that makes it unusable (the pool is then followed, but no worker comes from it)."""
    spec = pool.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if not isinstance(labels, dict) or not labels or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError("spec.selector.matchLabels is empty or not a string map")
    numbers = [p.get("number") for p in spec.get("targetPorts") or [] if isinstance(p, dict)]
    ports = [n for n in numbers if isinstance(n, int) and 0 < n < 65536]
    if not ports or len(ports) != len(numbers):
        raise ValueError("spec.targetPorts has no valid port number")
    protocol = spec.get("appProtocol") or "http"
    if protocol not in APP_PROTOCOLS:
        raise ValueError(f"spec.appProtocol {protocol!r} is not one of {APP_PROTOCOLS}")
    if protocol != "http":
        # h2c pools are gRPC model servers; the picker routes OpenAI HTTP/JSON requests.
        raise ValueError(f"spec.appProtocol {protocol!r} (gRPC model servers) is not "
                         "supported: llm-picker routes HTTP/JSON engines")
    return PoolTarget(tuple(sorted(labels.items())), tuple(ports), protocol)


def selector_string(target: PoolTarget) -> str:
    """The API's `labelSelector` query for the target's matchLabels."""
    return ",".join(f"{key}={value}" for key, value in target.match_labels)


def pod_ready(pod: Mapping[str, Any]) -> str | None:
    """The pod's IP when it may serve: Ready condition True, an IP, not terminating."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [] if isinstance(c, dict))
    ip = status.get("podIP")
    return ip if ready and isinstance(ip, str) and ip else None


def worker_specs(pods: Iterable[Mapping[str, Any]], target: PoolTarget,
                 settings: KubernetesSettings) -> list[WorkerSpec]:
    """One worker per ready pod and target port (several ports are data-parallel ranks, each
    its own endpoint, as the InferencePool API defines them), named after the pod."""
    specs: list[WorkerSpec] = []
    for pod in pods:
        ip = pod_ready(pod)
        if ip is None:
            continue
        name = str((pod.get("metadata") or {}).get("name", ""))
        host = f"[{ip}]" if ":" in ip else ip
        for rank, port in enumerate(target.ports):
            labels = {"pod": name[:256]}
            if len(target.ports) > 1:
                labels["port_rank"] = str(rank)
            try:
                specs.append(WorkerSpec(
                    url=f"http://{host}:{port}", id=f"{name}:{port}",
                    runtime_type=settings.runtime_type, labels=labels))
            except ValueError as exc:  # an address the API should never serve
                log.warning("pod %r skipped: %s", name, exc)
    return specs
