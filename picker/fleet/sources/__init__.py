"""Discovery sources that find workers by themselves: Kubernetes (InferencePool or a label
selector, list + watch) and DNS (a headless Service, polled).

Each source owns the workers it found through `WorkerManager.declare(owner, specs)`, as the
configuration file owns its own: discovery of models, one worker per data-parallel rank, and
drain (never a bare remove) when an address goes away. `synced` turns true once the source has
applied its first complete view, which readiness waits for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from picker.errors import extra_needed
from picker.fleet.sources.protocols import ObjectiveSink, OwnedSource, Source

if TYPE_CHECKING:  # picker.fleet.served_models imports this package's settings
    from picker.fleet.manager import WorkerManager
    from picker.fleet.served_models import DiscoverySettings

__all__ = ["ObjectiveSink", "OwnedSource", "Source", "build_sources"]


def build_sources(settings: DiscoverySettings, manager: WorkerManager,
                  objectives: ObjectiveSink | None = None) -> list[Source]:
    """The configured sources, built (no I/O); their client libraries are imported here, so a
    missing extra is a clear error at start-up. `objectives`: where Kubernetes discovery
    reports the InferenceObjectives of its pool (None: not followed)."""
    sources: list[Source] = []
    if settings.kubernetes is not None:
        with extra_needed("discovery.kubernetes", "kubernetes", "the 'kubernetes' extra"):
            from picker.fleet.sources.kubernetes import KubernetesSource
        sources.append(KubernetesSource(settings.kubernetes, manager, objectives=objectives))
    if settings.dns is not None:
        with extra_needed("discovery.dns", "dns", "the 'dns' extra"):
            from picker.fleet.sources.dns import DnsSource
        sources.append(DnsSource(settings.dns, manager))
    return sources

