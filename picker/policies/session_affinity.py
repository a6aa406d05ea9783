"""Session affinity: the same session key goes to the same worker while that worker is there.

Rendezvous (highest-random-weight) hashing: each candidate scores hash(key, worker id) and the
highest wins, so when a worker leaves only its own sessions move, and no ring has to be kept in
sync with the registry. Requests without a key go to the fallback policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.policies.least_load import LeastLoad
from picker.routing.request import RoutingRequest


class SessionAffinityParams(SeededParams):
    # Read the key from this request header instead of the default session key (the
    # `x-session-id` header, else the body's `user`).
    header: str | None = None


class SessionAffinity:
    name = "session_affinity"

    def __init__(self, params: SessionAffinityParams) -> None:
        self._header = params.header.lower() if params.header else None
        self._fallback = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        key = request.headers.get(self._header) if self._header else request.session_key
        if not key:
            return self._fallback.pick(request, candidates)
        # Per model: a user's sessions on two LoRA adapters (or base models) are placed
        # independently, each among the engines serving that adapter.
        scoped = f"{request.model}\x00{key}"
        return max(candidates, key=lambda w: _weight(scoped, w.id))


def _weight(key: str, worker_id: str) -> int:
    """A hash that is the same in every process: Python's hash() of a str is salted per
    process, which would move every session on a restart and split it across picker replicas."""
    digest = hashlib.blake2b(f"{key}\x00{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


DESCRIPTOR = PolicyDescriptor(SessionAffinity.name, SessionAffinityParams,
                              SessionAffinity)
