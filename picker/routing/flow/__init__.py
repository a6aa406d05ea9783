"""Flow control: priority bands, fairness between flows, bounded queues with a TTL and a
saturation detector, in front of the router (see controller.py)."""

from picker.routing.flow.control import FlowControl
from picker.routing.flow.controller import (
    FlowController,
    FlowObserver,
    FlowOutcome,
    FlowRow,
    FlowStats,
)
from picker.routing.flow.key import FlowAsk, FlowKey, flow_ask, flow_key, listing_order
from picker.routing.flow.objectives import Objectives
from picker.routing.flow.saturation import Room, SaturationDetector
from picker.routing.flow.settings import FlowSettings
from picker.routing.flow.ticket import Ticket

__all__ = ["FlowAsk", "FlowControl", "FlowController", "FlowKey", "FlowObserver",
           "FlowOutcome", "FlowRow", "FlowSettings", "FlowStats", "Objectives", "Room",
           "SaturationDetector", "Ticket", "flow_ask", "flow_key", "listing_order"]
