"""The three ways a prefill/decode pair is told about each other, as pure body/header rewrites.

- SGLang bootstrap (SGLang's PD router, mini_lb): both workers get the same body with
  `bootstrap_host`, `bootstrap_port` (the prefill worker's bootstrap server) and
  `bootstrap_room` (a random 63-bit id; one per prompt for batched inputs); the decode worker
  pulls the KV cache of that room from the prefill worker.
- vLLM NIXL two-step (vLLM's disaggregated-serving proxy): the prefill worker gets the body
  with `max_tokens: 1`, `stream: false` and `kv_transfer_params: {do_remote_decode: true}`;
  its reply's `kv_transfer_params` go into the decode worker's body.
- llm-d routing sidecar: the decode worker's sidecar runs the prefill itself; the request
  goes to decode with `x-prefiller-host-port: <prefill host:port>`.

Which one a pair speaks follows the decode worker's spec (`protocol_of`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from picker import control_headers
from picker.workers import RuntimeType, WorkerSpec

__all__ = [
    "PREFILLER_HEADER", "Forward", "PdProtocol", "nixl_prefill_body", "protocol_of",
    "with_bootstrap", "with_kv_transfer_params",
]

# llm-d's routing sidecar reads the prefill worker's address from this request header.
PREFILLER_HEADER = control_headers.PREFILLER

# kv_connector values (case-insensitive) that mean the llm-d routing sidecar does the prefill.
_SIDECAR_CONNECTORS = frozenset({"llm-d", "llm-d-sidecar", "sidecar"})


class PdProtocol(enum.StrEnum):
    SGLANG = "sglang"
    NIXL = "nixl"
    SIDECAR = "sidecar"


def protocol_of(decode: WorkerSpec) -> PdProtocol:
    """SGLang engines bootstrap; an llm-d sidecar connector gets the header; other engines
    (vLLM with NixlConnector and the connectors that share its kv_transfer_params) the
    two-step."""
    if decode.runtime_type is RuntimeType.SGLANG:
        return PdProtocol.SGLANG
    if (decode.kv_connector or "").lower() in _SIDECAR_CONNECTORS:
        return PdProtocol.SIDECAR
    return PdProtocol.NIXL


@dataclass(frozen=True, slots=True)
class Forward:
    """What the proxy sends to the decode worker instead of the client's request: a new body
    (None: unchanged) and headers to set."""

    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def with_bootstrap(data: Mapping[str, Any], host: str | None, port: int | None,
                   rng: random.Random) -> dict[str, Any]:
    """The body both workers of an SGLang pair get: one room per prompt of a batch."""
    size = _batch_size(data)
    rooms: int | list[int] = (rng.getrandbits(63) if size is None
                              else [rng.getrandbits(63) for _ in range(size)])
    hosts: str | None | list[str | None] = host if size is None else [host] * size
    ports: int | None | list[int | None] = port if size is None else [port] * size
    return {**data, "bootstrap_host": hosts, "bootstrap_port": ports, "bootstrap_room": rooms}


def nixl_prefill_body(data: Mapping[str, Any]) -> dict[str, Any]:
    """The prefill worker's request in the two-step: one token, not streamed, KV kept for a
    remote decode."""
    body = {key: value for key, value in data.items() if key != "stream_options"}
    body.update(stream=False, max_tokens=1, kv_transfer_params={
        "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
        "remote_block_ids": None, "remote_host": None, "remote_port": None})
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    return body


def with_kv_transfer_params(data: Mapping[str, Any],
                            params: Mapping[str, Any]) -> dict[str, Any]:
    """The decode worker's request in the two-step: the client's body plus where the KV is."""
    return {**data, "kv_transfer_params": dict(params)}


def _batch_size(data: Mapping[str, Any]) -> int | None:
    """Prompts in a batched completions request (a list of strings or of token-id lists);
    None for a single prompt (a string, a token-id list, or chat messages)."""
    prompt = data.get("prompt")
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt \
            and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return None
