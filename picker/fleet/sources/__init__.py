"""Discovery sources that find workers by themselves: Kubernetes (InferencePool or a label
selector, list + watch) and DNS (a headless Service, polled).

Each source owns the workers it found through `WorkerManager.declare(owner, specs)`, as the
configuration file owns its own: discovery of models, one worker per data-parallel rank, and
drain (never a bare remove) when an address goes away. `synced` turns true once the source has
applied its first complete view, which readiness waits for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from picker.errors import extra_needed

if TYPE_CHECKING:  # picker.fleet.served_models imports this package's settings
    from picker.fleet.manager import WorkerManager
    from picker.fleet.served_models import DiscoverySettings

__all__ = ["ObjectiveSink", "OwnedSource", "Source", "build_sources"]


class Source(Protocol):
    @property
    def synced(self) -> bool:
        """The first complete view has been applied."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ObjectiveSink(Protocol):
    """Where Kubernetes discovery reports the InferenceObjectives of its pool, name ->
    priority, the whole set each time (picker.routing.flow.objectives reads them)."""

    def discovered(self, priorities: Mapping[str, int]) -> None: ...


class OwnedSource(Source, Protocol):
    """A source the host builds (LiteLLM's deployments); the runtime hands it the manager."""

    def attach(self, manager: WorkerManager) -> None: ...


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

