"""EngineTokenizer: a model's tokenizer directory, loaded and applied as the engines apply it.

Loading follows transformers 5.22.2 (the newest release vLLM 0.34 accepts,
`transformers>=5.16.1,<5.23.0`), tokenization_utils_base.py:

- `tokenizer.json` is the tokenizer: with it present, `add_bos_token`/`add_eos_token` of
  tokenizer_config.json are dropped (L1809-L1811), so whether a completion gets a BOS is the
  file's post-processor's decision;
- the chat template is `chat_template.jinja` plus `additional_chat_templates/*.jinja` when such
  files exist (they replace the config's, L1813-L1830), else tokenizer_config.json's
  `chat_template`, a string or a list of `{name, template}` (L1084-L1088); with several, a
  request with tools takes `tool_use` if there is one, else `default` (L3341-L3357);
- the named special tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
  `cls_token`, `mask_token`, L986-L994) come from tokenizer_config.json, or from
  special_tokens_map.json when the config has no `added_tokens_decoder` (L1893-L1910); they are
  template variables, and tokens the config declares that tokenizer.json lacks are added to it
  (tokenization_utils_tokenizers.py L470-L504).

Encoding follows vLLM: a chat is rendered to text (tokenize=False, vllm 0.34.0
renderers/online_renderer.py L801-L808) and encoded with `add_special_tokens=False` (the chat
request's default, entrypoints/openai/chat_completion/protocol.py L352); a completion prompt
with `add_special_tokens=True` (completion/protocol.py L118).

Not followed: transformers v5 lets a model-specific `tokenizer_class` (LlamaTokenizer,
GemmaTokenizer, ...) rebuild the pipeline from the vocabulary with its own pre-tokenizer instead
of tokenizer.json's (tokenization_utils_tokenizers.py L114-L121). The picker uses tokenizer.json
as written, as SGLang's gateway does; such a class is logged at load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from picker.errors import ConfigError, InvalidRequest, extra_needed
from picker.tokens.conversation import to_conversation, to_tools
from picker.tokens.detokenize import Detokenizer
from picker.tokens.segments import SegmentEncoder
from picker.tokens.template import ChatTemplate, TemplateProblem

__all__ = ["EngineTokenizer", "load_tokenizer"]

log = logging.getLogger("llm_picker.tokens")

_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")
# tokenizer_class values that load tokenizer.json as it is.
_PLAIN_CLASSES = frozenset({None, "PreTrainedTokenizerFast", "TokenizersBackend"})
# Variables the renderer sets itself; a request's chat_template_kwargs cannot replace them.
_RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class EngineTokenizer:
    """Token ids an engine computes for a chat or a completion, from the model's own files."""

    def __init__(self, tokenizer: Any, templates: Mapping[str, ChatTemplate],
                 special_tokens: Mapping[str, str], pre_tokenizer: Any = None) -> None:
        self._tokenizer = tokenizer
        self._segments = SegmentEncoder(tokenizer, pre_tokenizer)
        self._templates = dict(templates)
        self.special_tokens = dict(special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return bool(self._templates)

    def template_for(self, tools: bool) -> ChatTemplate:
        if tools and "tool_use" in self._templates:
            return self._templates["tool_use"]
        template = self._templates.get("default")
        if template is None:
            raise InvalidRequest("the model's tokenizer has no chat template")
        return template

    def chat_text(self, messages: Sequence[Any], *, tools: Any = None, documents: Any = None,
                  add_generation_prompt: bool = True,
                  variables: Mapping[str, Any] | None = None) -> str:
        """The prompt vLLM renders for this chat; a template's refusal is a 400 with its
        reason, as vLLM answers (renderers/hf.py L928-L937)."""
        dumped_tools = to_tools(tools)
        template = self.template_for(dumped_tools is not None)
        extra = {k: v for k, v in (variables or {}).items()
                 if k in template.variables and k not in _RESERVED}
        try:
            return template.render(to_conversation(messages, template.content_format),
                                   tools=dumped_tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt,
                                   variables={**self.special_tokens, **extra})
        except TemplateProblem as exc:
            raise InvalidRequest(f"the chat template refused the messages: {exc}") from exc

    def chat_ids(self, messages: Sequence[Any], *, tools: Any = None, documents: Any = None,
                 add_generation_prompt: bool = True,
                 variables: Mapping[str, Any] | None = None) -> list[int]:
        text = self.chat_text(messages, tools=tools, documents=documents,
                              add_generation_prompt=add_generation_prompt, variables=variables)
        return self.encode(text, add_special_tokens=False)

    def body_ids(self, body: Mapping[str, Any]) -> list[int]:
        """Token ids of an OpenAI chat or completion body, with the request options vLLM
        reads (chat: tools, documents, add_generation_prompt, chat_template_kwargs,
        reasoning_effort; completion: add_special_tokens)."""
        if "messages" not in body:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise InvalidRequest("prompt must be a string to be tokenized by the picker")
            return self.encode(prompt, add_special_tokens=_flag(body, "add_special_tokens", True))
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise InvalidRequest("chat_template_kwargs must be an object")
        variables = dict(kwargs)
        # build_chat_params (chat_completion/protocol.py L645-L668): the request's own fields
        # win over chat_template_kwargs, and a reasoning effort turns thinking on or off.
        effort = body.get("reasoning_effort")
        if effort is not None:
            variables["reasoning_effort"] = effort
            variables.setdefault("enable_thinking", effort != "none")
        text = self.chat_text(body["messages"], tools=body.get("tools"),
                              documents=body.get("documents"),
                              add_generation_prompt=_flag(body, "add_generation_prompt", True),
                              variables=variables)
        return self.encode(text, add_special_tokens=_flag(body, "add_special_tokens", False))

    def detokenizer(self, skip_special_tokens: bool = True) -> Detokenizer:
        """A fresh incremental decoder of one generation's ids."""
        return Detokenizer(self._tokenizer, skip_special_tokens)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """The tokenizer's ids; without special tokens (every chat) from cached pieces."""
        if not add_special_tokens:
            return self._segments.encode(text)
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=True).ids
        return ids


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean")
    return value


def load_tokenizer(path: str, chat_template: str | None = None, *,
                   key: str = "prefix.tokenizer") -> EngineTokenizer:
    """Load at start-up, so a missing or malformed file fails before serving, naming `key`.

    `path` is a model's tokenizer directory, or a tokenizer.json file alone; `chat_template`
    replaces the directory's template: a Jinja file, or the name of one of its templates."""
    with extra_needed(f"{key}.kind", "hf", "the tokenizers package (kind hf)"):
        from tokenizers import AddedToken, Tokenizer
    where = Path(path)
    file = where / "tokenizer.json" if where.is_dir() else where
    if not file.is_file():
        raise ConfigError(f"{key}.path", f"no tokenizer.json at {path}")
    try:
        tokenizer = Tokenizer.from_file(str(file))
        pre_tokenizer = json.loads(file.read_bytes()).get("pre_tokenizer")
    except Exception as exc:  # the library raises bare Exception on malformed files
        raise ConfigError(f"{key}.path", f"cannot load {file}: {exc}") from exc
    config = _json(where / "tokenizer_config.json", key) if where.is_dir() else {}
    special = _special_tokens(config, where, key)
    _add_declared_tokens(tokenizer, config, special, AddedToken)
    if config.get("tokenizer_class") not in _PLAIN_CLASSES:
        log.warning("%s: tokenizer_class %s; the picker applies tokenizer.json as written",
                    path, config.get("tokenizer_class"))
    sources = _template_sources(config, where, key)
    if chat_template is not None:
        sources = {"default": _override(chat_template, sources, key)}
    templates = {}
    for name, source in sources.items():
        try:
            templates[name] = ChatTemplate(source)
        except Exception as exc:  # Jinja's TemplateSyntaxError and what its parser raises
            raise ConfigError(f"{key}.chat_template", f"template {name!r}: {exc}") from exc
    if templates and "default" not in templates:
        raise ConfigError(f"{key}.chat_template", f"{path} has named chat templates "
                          f"{sorted(templates)} but no default; name one in chat_template")
    return EngineTokenizer(tokenizer, templates, special, pre_tokenizer)


def _json(file: Path, key: str) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}.path", f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{key}.path", f"{file} is not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _special_tokens(config: Mapping[str, Any], where: Path, key: str) -> dict[str, str]:
    merged = dict(config)
    if "added_tokens_decoder" not in config and where.is_dir():
        merged.update(_json(where / "special_tokens_map.json", key))
    tokens = {name: _token_text(merged.get(name)) for name in _SPECIAL_TOKEN_NAMES}
    return {name: text for name, text in tokens.items() if text is not None}


def _add_declared_tokens(tokenizer: Any, config: Mapping[str, Any],
                         special: Mapping[str, str], added_token: Any) -> None:
    """Tokens the config declares that tokenizer.json lacks, added as transformers adds them:
    the config's added_tokens_decoder in id order, then the named special tokens."""
    present = {str(t.content) for t in tokenizer.get_added_tokens_decoder().values()}
    declared = config.get("added_tokens_decoder") or {}
    missing = []
    for _, token in sorted(declared.items(), key=lambda item: int(item[0])):
        if isinstance(token, Mapping) and token.get("content") not in present:
            fields = ("single_word", "lstrip", "rstrip", "normalized", "special")
            missing.append(added_token(token["content"],
                                       **{f: bool(token[f]) for f in fields if f in token}))
            present.add(token["content"])
    for text in special.values():
        if text not in present:
            missing.append(added_token(text, special=True, normalized=False))
            present.add(text)
    if missing:
        tokenizer.add_tokens(missing)


def _template_sources(config: Mapping[str, Any], where: Path, key: str) -> dict[str, str]:
    if not where.is_dir():
        return {}
    files = {}
    if (where / "chat_template.jinja").is_file():
        files["default"] = (where / "chat_template.jinja").read_text(encoding="utf-8")
    extra = where / "additional_chat_templates"
    if extra.is_dir():
        for file in sorted(extra.glob("*.jinja")):
            files[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if files:
        return files
    value = config.get("chat_template")
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(isinstance(t, Mapping) and isinstance(t.get("name"), str)
                                       and isinstance(t.get("template"), str) for t in value):
        return {t["name"]: t["template"] for t in value}
    raise ConfigError(f"{key}.path", "tokenizer_config.json chat_template must be a string or "
                                     "a list of {name, template}")


def _override(chat_template: str, sources: Mapping[str, str], key: str) -> str:
    if chat_template in sources:
        return sources[chat_template]
    try:
        return Path(chat_template).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}.chat_template", f"cannot load {chat_template}: {exc}") from exc
