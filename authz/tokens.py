"""Lease tokens: what the check answer puts on the upstream request and the access log returns.

Random, not a counter: a client cannot guess another request's token and end its lease with a
forged header (Envoy overwrites a client's copy anyway). In `serve --workers N` a token starts
with its process's prefix, so Envoy's access loggers, one per process filtering on the prefix,
send each request's entry to the process holding its lease.
"""

from __future__ import annotations

import secrets

from picker.routing import control_headers

__all__ = ["LEASE_HEADER", "new_token", "process_prefix"]

LEASE_HEADER = control_headers.LEASE


def process_prefix(index: int) -> str:
    """The prefix of every token process `index` hands out ("p1-" never prefixes "p10-")."""
    return f"p{index}-"


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_hex(12)
