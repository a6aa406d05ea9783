"""Settings of the discovery sources that find workers by themselves (Kubernetes, DNS).

Kept apart from the sources so the configuration model imports no client library: the
Kubernetes and DNS clients are optional extras, imported only when a source is configured.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from picker.fleet.worker_spec import Port, RuntimeType
from picker.strict import StrictModel

__all__ = [
    "APP_PROTOCOLS", "DnsSettings", "KubernetesSettings", "LabelSelector", "nameserver_address",
]

# InferencePool v1 `spec.appProtocol`; absent means HTTP/1.1.
APP_PROTOCOLS = ("http", "kubernetes.io/h2c")


class LabelSelector(StrictModel):
    """Pods by label, as an InferencePool (v1) selects them: equality on every label."""

    model_config = ConfigDict(populate_by_name=True)

    match_labels: dict[str, str] = Field(alias="matchLabels", min_length=1)


class _SourceSettings(StrictModel):
    """What every self-discovering source needs to turn an address into a worker."""

    runtime_type: RuntimeType = Field(
        default=RuntimeType.VLLM, description="The engines' kind (metrics names, SGLang info)")
    # Removal drains: requests in flight on a pod that went away finish first (bounded).
    drain_timeout_secs: float = Field(default=30.0, gt=0)


class KubernetesSettings(_SourceSettings):
    """Follow an InferencePool (or a bare label selector) and the ready pods it selects."""

    namespace: str | None = Field(
        default=None, min_length=1,
        description="Defaults to the service account's namespace when running in a pod")
    inference_pool: str | None = Field(default=None, min_length=1)
    selector: LabelSelector | None = None
    target_ports: list[Port] = Field(default_factory=list, max_length=8)
    kubeconfig: str | None = Field(
        default=None, description="Path; unset: in-cluster service account, else ~/.kube/config")
    # Watches end server-side after this long and resume from the last resourceVersion seen,
    # so a silently dead connection costs at most this much staleness.
    watch_timeout_secs: int = Field(default=300, ge=1, le=3600)
    # Workers that could not be registered (engine not answering yet) are retried this often.
    resync_secs: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_way_to_select(self) -> KubernetesSettings:
        if (self.inference_pool is None) == (self.selector is None):
            raise ValueError("set inference_pool, or selector with target_ports (not both)")
        if self.selector is not None and not self.target_ports:
            raise ValueError("selector needs target_ports (the engine ports on each pod)")
        if self.inference_pool is not None and self.target_ports:
            raise ValueError("target_ports come from the InferencePool's targetPorts: remove "
                             "target_ports, or use selector instead of inference_pool")
        if len(set(self.target_ports)) != len(self.target_ports):
            raise ValueError("target_ports must be unique")
        return self


class DnsSettings(_SourceSettings):
    """Poll a name (a headless Service) for its addresses; every address is a worker."""

    name: str = Field(min_length=1, description="e.g. vllm.default.svc.cluster.local")
    port: Port | None = Field(default=None, description="Engine port; unset with srv: from SRV")
    srv: bool = Field(default=False, description="Read targets and ports from SRV records")
    interval_secs: float = Field(default=10.0, gt=0)
    nameservers: list[str] = Field(
        default_factory=list, description="host or host:port; unset: the system resolver's")
    timeout_secs: float = Field(default=2.0, gt=0)
    scheme: Literal["http", "https"] = "http"

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, servers: list[str]) -> list[str]:
        for server in servers:
            nameserver_address(server)
        return servers

    @model_validator(mode="after")
    def _port_known(self) -> DnsSettings:
        if self.port is None and not self.srv:
            raise ValueError("set port (A/AAAA records carry none), or srv: true")
        return self


def nameserver_address(text: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[v6]:port` -> (ip, port); ValueError naming the nameserver."""
    host, port = text, "53"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        host = host if bracket else ""
        port = rest[1:] if rest.startswith(":") else "" if rest else "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ValueError(f"nameserver {text!r} is not ip, ip:port or [ipv6]:port")
    return host, number
