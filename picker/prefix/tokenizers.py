"""How a request becomes the units its prefix blocks are made of.

- `character` (default, no dependencies): the prompt text itself; blocks are characters.
- `hf`: the model's tokenizer directory in-process (the `hf` extra; picker/tokens): chats
  rendered through its chat template and encoded as vLLM does, completions with the special
  tokens vLLM adds, so blocks are the token ids the engine computes and hashes. A tokenizer.json
  file alone still works, without the directory's template and special tokens.
- `remote`: the engine's own `POST /tokenize` (vLLM's API: completion form {model, prompt},
  chat form {model, messages, add_generation_prompt} -> {tokens, count, max_model_len}); exact
  by construction, one HTTP call per request, so it is the only tokenizer the router awaits.

Misconfiguration is caught at start-up: a remote tokenizer without an endpoint, an hf
tokenizer whose files are missing or unreadable, a chat template that does not parse.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field, model_validator

from picker.errors import NoHealthyWorker, extra_needed
from picker.fleet.worker_tls import worker_tls
from picker.routing.request import Api, RoutingRequest
from picker.strict import StrictModel

if TYPE_CHECKING:
    # Imported where an hf tokenizer is loaded: jinja2 and tokenizers are the `hf` extra.
    from picker.tokens import EngineTokenizer

__all__ = ["HfTokenizer", "RemoteTokenizer", "TokenizerSettings", "load_hf_tokenizer"]

log = logging.getLogger("llm_picker.tokenizer")


class TokenizerSettings(StrictModel):

    kind: Literal["character", "hf", "remote"] = "character"
    path: str | None = Field(default=None, description="hf: the model's tokenizer directory "
                             "(tokenizer.json, tokenizer_config.json), or a tokenizer.json file")
    chat_template: str | None = Field(
        default=None, description="hf: replaces the directory's chat template: a Jinja file, "
                                  "or the name of one of its templates (vLLM's --chat-template)")
    endpoint: str | None = Field(default=None, description="remote: base url with /tokenize")
    timeout_secs: float = Field(default=0.5, gt=0)
    retries: int = Field(default=1, ge=0)
    fallback: bool = Field(default=False, description="remote: use characters on failure")

    @model_validator(mode="after")
    def _complete(self) -> TokenizerSettings:
        if self.kind == "remote" and not self.endpoint:
            raise ValueError("a remote tokenizer needs an endpoint (prefix.tokenizer.endpoint)")
        if self.kind == "hf" and not self.path:
            raise ValueError("an hf tokenizer needs the path of the model's tokenizer directory "
                             "or tokenizer.json (prefix.tokenizer.path)")
        return self


class HfTokenizer:
    """The prefix index's view of picker/tokens: a request's token ids as the engine has them."""

    def __init__(self, engine: EngineTokenizer) -> None:
        from picker.tokens import MediaPart

        self._engine = engine
        self._media_part = MediaPart

    def units(self, request: RoutingRequest) -> list[int]:
        """Token ids of the prompt the engine sees. A chat or a completion with a string
        prompt goes through the engine's rules; other inputs (a chat without a template or
        with an image, the Responses API, a prompt array) are their prompt text encoded as it
        is. A chat its template refuses is a 400, as the engine would answer."""
        body = request.body
        if (request.api is Api.CHAT and request.messages is not None
                and self._engine.has_chat_template):
            try:
                return self._engine.body_ids(body if body is not None
                                             else {"messages": request.messages})
            except self._media_part:
                pass  # routed on its text: its blocks match nothing, the request still goes
        if (request.api is Api.COMPLETIONS and body is not None
                and isinstance(body.get("prompt"), str)):
            return self._engine.body_ids(body)
        return self._engine.encode(request.prompt_text, add_special_tokens=False)


def load_hf_tokenizer(path: str, chat_template: str | None = None) -> HfTokenizer:
    """Load at start-up so a wrong path fails before serving, naming the key."""
    with extra_needed("prefix.tokenizer.kind", "hf", "jinja2 and tokenizers (kind hf)"):
        from picker.tokens import load_tokenizer
    return HfTokenizer(load_tokenizer(path, chat_template, key="prefix.tokenizer"))


class RemoteTokenizer:
    """vLLM-style /tokenize on an engine; the one asynchronous step a pick can have."""

    def __init__(self, settings: TokenizerSettings) -> None:
        assert settings.endpoint is not None
        self._url = settings.endpoint.rstrip("/") + "/tokenize"
        self._settings = settings
        self._client: httpx.AsyncClient | None = None
        self.failures = 0

    async def tokens(self, request: RoutingRequest) -> list[int] | None:
        """Token ids, or None when the call failed and fallback to characters is allowed."""
        if self._client is None:
            self._client = httpx.AsyncClient(verify=worker_tls())
        payload: dict[str, Any] = {"model": request.model}
        if request.api is Api.CHAT and request.messages is not None:
            payload.update(messages=list(request.messages), add_generation_prompt=True)
        else:
            payload["prompt"] = request.prompt_text
        for attempt in range(self._settings.retries + 1):
            try:
                response = await self._client.post(self._url, json=payload,
                                                    timeout=self._settings.timeout_secs)
                response.raise_for_status()
                tokens = response.json()["tokens"]
                if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                    return tokens
                raise ValueError("tokens is not a list of ints")
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                error = exc
                if attempt < self._settings.retries:
                    await asyncio.sleep(0.01 * (attempt + 1))
        self.failures += 1
        if self._settings.fallback:
            return None
        raise NoHealthyWorker(f"tokenizer at {self._url} unavailable ({type(error).__name__})")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

