"""RoutingRequest: everything a policy may look at, decoupled from the proxy that produced it."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.prefix.index import PrefixMatch

__all__ = ["Api", "Rewrite", "RoutingRequest"]


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What one request was rewritten to: `rule` None when the header named the target."""

    requested: str
    target: str
    rule: str | None


class Api(enum.Enum):
    """The API a request targets (its path); engines cache prompts differently per API."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"
    # Anthropic's Messages API and its token count, which vLLM and SGLang serve.
    MESSAGES = "/v1/messages"
    COUNT_TOKENS = "/v1/messages/count_tokens"
    # Cross-encoder APIs (Jina/Cohere-style rerank, vLLM's and SGLang's score); the other paths
    # engines serve them at are in openai_body's path table.
    RERANK = "/v1/rerank"
    SCORE = "/v1/score"

    @property
    def anthropic(self) -> bool:
        """Answered in Anthropic's shapes (errors included), not OpenAI's."""
        return self in (Api.MESSAGES, Api.COUNT_TOKENS)


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
    # Set when a model rewrite sent the request on as another model (`model` is the target,
    # `body` carries it): what was asked for, and by which rule.
    rewrite: Rewrite | None = None
    # The flow (picker.routing.flow) an adapter's host vouches for, from its own
    # authentication (LiteLLM's team or key); trusted where client headers may not be.
    flow_id: str | None = None
    # The adapter's host sends the request to a gRPC worker itself (LiteLLM's gRPC provider
    # builds the Generate call when the call reaches it): the lease carries no transcoder.
    caller_transcodes: bool = False
    # The adapter will see the answer (its usage, and its first token when streamed): LiteLLM
    # reports every call's, ext_proc when the response body passes the picker. Without it
    # the lease book makes no prediction that only the answer could check.
    answer_seen: bool = True
