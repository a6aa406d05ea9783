"""How a request becomes the units its prefix blocks are made of.

- `character` (default, no dependencies): the prompt text itself; blocks are characters.
- `hf`: HuggingFace `tokenizers` from a tokenizer.json on disk (the `hf` extra); blocks are
  token ids, the same ids the engine computes when the file is the model's.
- `remote`: the engine's own `POST /tokenize` (vLLM's API: completion form {model, prompt},
  chat form {model, messages, add_generation_prompt} -> {tokens, count, max_model_len}); exact
  by construction, one HTTP call per request, so it is the only tokenizer the router awaits.

Misconfiguration is caught at start-up: a remote tokenizer without an endpoint, an hf
tokenizer whose file is missing or unreadable.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, model_validator

from picker.errors import ConfigError, NoHealthyWorker
from picker.routing.request import Api, RoutingRequest
from picker.strict import StrictModel

__all__ = ["HfTokenizer", "RemoteTokenizer", "TokenizerSettings", "load_hf_tokenizer"]

log = logging.getLogger("llm_picker.tokenizer")


class TokenizerSettings(StrictModel):

    kind: Literal["character", "hf", "remote"] = "character"
    path: str | None = Field(default=None, description="hf: tokenizer.json file")
    chat_template: str | None = Field(
        default=None, description="hf: Jinja chat template file applied to chat messages")
    endpoint: str | None = Field(default=None, description="remote: base url with /tokenize")
    timeout_secs: float = Field(default=0.5, gt=0)
    retries: int = Field(default=1, ge=0)
    fallback: bool = Field(default=False, description="remote: use characters on failure")

    @model_validator(mode="after")
    def _complete(self) -> TokenizerSettings:
        if self.kind == "remote" and not self.endpoint:
            raise ValueError("a remote tokenizer needs an endpoint (prefix.tokenizer.endpoint)")
        if self.kind == "hf" and not self.path:
            raise ValueError("an hf tokenizer needs a path to tokenizer.json "
                             "(prefix.tokenizer.path)")
        return self


class HfTokenizer:
    def __init__(self, tokenizer: Any, template: Any = None) -> None:
        self._tokenizer = tokenizer
        self._template = template

    def units(self, request: RoutingRequest) -> list[int]:
        """Token ids of the text the engine sees: chat messages rendered through the model's
        chat template when one is configured (as vLLM does before tokenizing)."""
        text = request.prompt_text
        if self._template is not None and request.messages is not None:
            text = self._template.render(messages=list(request.messages),
                                         add_generation_prompt=True)
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids


def _load_template(path: str) -> Any:
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise ConfigError("prefix.tokenizer.chat_template",
                          "needs jinja2: pip install 'llm-picker[hf]'") from exc
    try:
        source = Path(path).read_text()
        # Sandboxed, as Hugging Face renders chat templates: the file is configuration, not code.
        return ImmutableSandboxedEnvironment().from_string(source)
    except (OSError, TemplateError) as exc:
        raise ConfigError("prefix.tokenizer.chat_template", f"cannot load {path}: {exc}") from exc


def load_hf_tokenizer(path: str, chat_template: str | None = None) -> HfTokenizer:
    """Load at start-up so a wrong path fails before serving, naming the key."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ConfigError("prefix.tokenizer.kind",
                          "hf needs the tokenizers package: pip install 'llm-picker[hf]'") from exc
    if not Path(path).is_file():
        raise ConfigError("prefix.tokenizer.path", f"no tokenizer file at {path}")
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # the library raises bare Exception on malformed files
        raise ConfigError("prefix.tokenizer.path", f"cannot load {path}: {exc}") from exc
    return HfTokenizer(tokenizer, _load_template(chat_template) if chat_template else None)


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
            self._client = httpx.AsyncClient()
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

