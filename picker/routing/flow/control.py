"""FlowControl: flow control as the routing service uses it, in one object."""

from __future__ import annotations

from dataclasses import dataclass

from picker.routing.flow.controller import FlowController
from picker.routing.flow.key import FlowAsk, flow_ask
from picker.routing.flow.objectives import Objectives
from picker.routing.flow.settings import FlowSettings
from picker.routing.request import RoutingRequest

__all__ = ["FlowControl"]


@dataclass(frozen=True, slots=True)
class FlowControl:
    settings: FlowSettings
    objectives: Objectives  # written by Kubernetes discovery when it follows objectives
    controller: FlowController

    def ask(self, request: RoutingRequest) -> FlowAsk:
        """What the controller needs of `request` (its flow, band, tokens, deadline)."""
        return flow_ask(request, self.settings, self.objectives)
