"""Routing loops: a request that comes back through the picker is refused (508).

A worker that is the proxy itself (Envoy's own listener registered as an engine, by mistake or
by a token holder) sends each request back through the picker, which routes it there again;
Envoy stops it only at its circuit breaker, about a thousand hops later, with the client
waiting all the while.

Every request the proxy routes (ext_proc, ext_authz) carries `x-llm-picker-hop`: the hop list it
came with plus this process's token. A request whose list already holds the token has been
here: it is refused. The list is appended to, not overwritten, so a loop through several
processes or replicas is caught at the first one it meets again; only well-formed tokens count
and at most MAX_HOPS are kept, so the header stays small whatever a client sends. A client can
get its own request refused (a list of MAX_HOPS made-up tokens), no one else's: the tokens are
random per process. A prefill/decode pair's prefill call, which the picker sends itself, carries
the list too (picker.pd.pairing); LiteLLM's calls, which no proxy routes back, do not.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

from picker.errors import RoutingLoop
from picker.routing.control_headers import HOP

__all__ = ["MAX_HOPS", "TOKEN", "check", "onward"]

TOKEN = secrets.token_hex(6)
_TOKEN = re.compile(r"[0-9a-f]{12}")
# Pickers a request may pass through, in tiers of gateways: beyond this it is a loop whatever
# the tokens say.
MAX_HOPS = 8


def _passed(headers: Mapping[str, str]) -> list[str]:
    """The well-formed tokens of the request's hop list (a client's junk left out), bounded."""
    passed = headers.get(HOP)
    if not passed:
        return []
    return [t for t in (part.strip() for part in passed[:MAX_HOPS * 16].split(","))
            if _TOKEN.fullmatch(t)][-MAX_HOPS:]


def check(headers: Mapping[str, str]) -> None:
    """RoutingLoop if the request has passed this process, or too many pickers."""
    tokens = _passed(headers)
    if TOKEN in tokens:
        raise RoutingLoop("routing loop: this request already passed this picker (a worker "
                          "that sends requests back through the proxy, e.g. its own listener)")
    if len(tokens) >= MAX_HOPS:
        raise RoutingLoop(f"routing loop: this request passed {len(tokens)} pickers")


def onward(headers: Mapping[str, str]) -> str:
    """The hop list to send on: the one the request came with, and this process."""
    return ",".join([*_passed(headers), TOKEN])
