"""Ticket: a dispatched request's place in flow control, from dispatch to the end of its lease.

The lease that carries it tells it when a worker took the request (`opened`) and when it ended
(`finish`), exactly once each; a ticket whose request never reached a worker is `cancel`led.
Each transition goes to the desk that issued the ticket (the controller), under its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from picker.errors import FlowRefused
from picker.routing.flow.key import FlowAsk

__all__ = ["Ticket", "TicketDesk"]

TicketState = Literal["pending", "open", "done"]


class TicketDesk(Protocol):
    """Who issued the ticket (picker.routing.flow.controller.FlowController): it keeps the
    counts a ticket's transitions change, and moves `state` under its own lock."""

    def ticket_opened(self, ticket: Ticket) -> None: ...

    def ticket_finished(self, ticket: Ticket, generated: float, refund: bool) -> None: ...

    def ticket_again(self, ticket: Ticket) -> Ticket: ...

    def ticket_preemptible(self, ticket: Ticket, end: Callable[[FlowRefused], None]) -> bool: ...


class Ticket:
    __slots__ = ("_desk", "ask", "waited_secs", "state")

    def __init__(self, desk: TicketDesk, ask: FlowAsk, waited_secs: float) -> None:
        self._desk = desk
        self.ask = ask
        self.waited_secs = waited_secs
        self.state: TicketState = "pending"  # -> open -> done, or pending -> done

    def opened(self) -> None:
        """A worker's lease now counts the request (the router chose)."""
        self._desk.ticket_opened(self)

    def finish(self, generated_tokens: float = 0.0) -> None:
        """The request ended; its generated tokens count against its flow's share and
        quota."""
        self._desk.ticket_finished(self, generated_tokens, refund=False)

    def cancel(self) -> None:
        """The request never reached a worker (no worker fitted): its charge goes back."""
        self._desk.ticket_finished(self, 0.0, refund=True)

    def preemptible(self, end: Callable[[FlowRefused], None]) -> bool:
        """The adapter can end the running request: flow control may call `end` with the
        error to answer (once, from any thread, holding its lock: `end` must only schedule
        the ending) to free the slot for a higher band. False when it never will (preemption
        off, or the request is not sheddable)."""
        return self._desk.ticket_preemptible(self, end)

    def again(self) -> Ticket:
        """A new ticket for the same request, dispatched at once: its first worker failed
        before serving it (a prefill/decode pair's prefill) and this one ended with it."""
        return self._desk.ticket_again(self)
