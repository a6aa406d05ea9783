"""What a discovery source is to the runtime, and where Kubernetes reports objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the manager imports the sources' settings
    from picker.fleet.manager import WorkerManager

__all__ = ["ObjectiveSink", "OwnedSource", "Source"]


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
