"""What every routing policy is (`Policy`) and how it declares itself (`PolicyDescriptor`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ConfigDict, Field

from picker.fleet.engine_load import EngineSignal
from picker.fleet.registry import Worker
from picker.routing.request import RoutingRequest
from picker.strict import StrictModel

__all__ = ["Policy", "PolicyDescriptor", "PolicyParams", "SeededParams", "StaleAfterParams"]


class Policy(Protocol):
    """Chooses one worker among candidates.

    Synchronous and free of I/O: the router has already filtered `candidates` to routable workers
    serving the request's model, and guarantees the sequence is non-empty. Policy-private state
    (cursors, trees) lives on the instance; live worker state (in-flight) on the Worker.
    """

    name: str

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker: ...


class PolicyParams(StrictModel):
    """A policy's parameters. Unknown keys are errors; what the policy needs from the rest of
    the picker (the prefix index, engine metrics) is answered here because for some policies
    (weighted) it depends on the parameters."""

    model_config = ConfigDict(frozen=True)

    def needs_prefix(self) -> bool:
        return False

    def engine_signals(self) -> frozenset[EngineSignal]:
        return frozenset()

    def matches_text(self) -> bool:
        """Whether the policy compares prompts' text itself, not only its length: a host
        without the text (a replayed trace) then has to make one that shares prefixes where
        the prompts do, and may otherwise save that work."""
        return False


class SeededParams(PolicyParams):
    """Policies that break ties at random; a seed makes them repeatable (tests, benchmarks)."""

    seed: int | None = None


class StaleAfterParams(SeededParams):
    """Policies reading engine metrics; None takes `load.stale_after_secs`."""

    stale_after_secs: float | None = Field(default=None, gt=0)


P = TypeVar("P", bound=PolicyParams)


@dataclass(frozen=True, slots=True)
class PolicyDescriptor(Generic[P]):
    """One built-in policy, declared once: its name, its typed parameters and how to build it."""

    name: str
    params: type[P]
    build: Callable[[P], Policy]

    def create(self, params: P) -> Policy:
        return self.build(params)

    def parse(self, raw: Any) -> P:
        return self.params.model_validate(raw)
