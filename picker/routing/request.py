"""RoutingRequest: everything a policy may look at, decoupled from the proxy that produced it."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.prefix.index import PrefixMatch

__all__ = ["Api", "RoutingRequest"]


class Api(enum.Enum):
    """The OpenAI endpoint a request targets; engines cache prompts differently per API."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"


@dataclass(slots=True, frozen=True)
class RoutingRequest:
    """One request as policies see it.

    Adding an input (tokens, LoRA, priority) adds a field here and changes no policy signature.
    `prompt_text` is deterministic for equal requests so prefix indexes can hash it.
    """

    model: str
    api: Api
    prompt_text: str = ""
    stream: bool = False
    session_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Chat messages as sent (for a remote tokenizer's chat form); token ids once tokenized.
    messages: Sequence[Mapping[str, Any]] | None = None
    tokens: Sequence[int] | None = None
    # Filled by the router when a prefix index is configured; policies only read it.
    prefix: PrefixMatch | None = None
    # The decoded JSON body (a reference, not a copy): what prefill/decode protocols rewrite.
    body: Mapping[str, Any] | None = None
    # The client's time-to-first-token target (x-slo-ttft-ms or llm-d's alias), in seconds.
    slo_ttft_secs: float | None = None
    # The flow (picker.routing.flow) an adapter's host vouches for, from its own
    # authentication (LiteLLM's team or key); trusted where client headers may not be.
    flow_id: str | None = None
