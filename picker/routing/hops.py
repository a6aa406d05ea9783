"""Routing loops: a request that comes back through the picker is refused (508).

A worker that is the proxy itself (Envoy's own listener registered as an engine, by mistake or
by a token holder) sends each request back through the picker, which routes it there again;
Envoy stops it only at its circuit breaker, about a thousand hops later, with the client
waiting all the while.

Every routed request carries `x-llm-picker-hop`: the hop list it came with plus this process's
token. A request whose list already holds the token has been here: it is refused (508). The
list is appended to, not overwritten, so a loop through several processes or replicas is
caught at the first one it meets again; its length is bounded, so no header grows for ever.
A client cannot cause a refusal without knowing a token, which is random per process.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from picker.errors import RoutingLoop
from picker.routing.control_headers import HOP

__all__ = ["MAX_HOPS", "TOKEN", "check", "onward"]

TOKEN = secrets.token_hex(6)
# Pickers a request may pass through, in tiers of gateways: beyond this it is a loop whatever
# the tokens say.
MAX_HOPS = 8


def check(headers: Mapping[str, str]) -> None:
    """RoutingLoop if the request has passed this process, or too many pickers."""
    passed = headers.get(HOP)
    if not passed:
        return
    tokens = passed.split(",")
    if TOKEN in tokens:
        raise RoutingLoop("routing loop: this request already passed this picker (a worker "
                          "that sends requests back through the proxy, e.g. its own listener)")
    if len(tokens) >= MAX_HOPS:
        raise RoutingLoop(f"routing loop: this request passed {len(tokens)} pickers")


def onward(headers: Mapping[str, str]) -> str:
    """The hop list to send on: the one the request came with, and this process."""
    passed = headers.get(HOP)
    return f"{passed},{TOKEN}" if passed else TOKEN
