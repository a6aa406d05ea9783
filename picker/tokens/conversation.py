"""OpenAI chat messages and tools turned into what vLLM hands the chat template.

The same request renders differently depending on these steps, so they follow vLLM 0.34.0
(facts, file and line):

- content: a string becomes one text part, None no part; text parts (`text`, `input_text`,
  `output_text`, `refusal`, `thinking`) with empty text are skipped
  (renderers/chat_utils/chat_message.py L343, L403, L631-L645). For a "string" template the
  texts are joined with "\\n" (L419); for an "openai" template they stay parts,
  `{"type": "text", "text": ...}` plus the part's other fields (L476-L481);
- a tool message's list of text parts becomes one string joined with "\\n" (L668-L686);
  `tool_call_id` and a string `name` are kept (L662-L690);
- an assistant message keeps `tool_calls`, whose `arguments` JSON string is decoded into an
  object (an invalid or non-object one into {}), and an empty list is dropped (L699-L771);
  reasoning, sent as `reasoning` or the deprecated `reasoning_content`, goes to the template
  under both names (L654-L660; entrypoints/openai/chat_completion/protocol.py L586-L602);
- a system text part starting with "x-anthropic-billing-header" loses that line (L574-L608);
- tools reach the template as `tool.model_dump()` (renderers/online_renderer.py L294-L299):
  `{"type": "function", "function": {"name", "description", "parameters"}}` with null for an
  absent description or parameters, and `strict` only when set
  (entrypoints/generate/base/protocol.py L298-L313).

Media parts (images, audio, video) become model-specific placeholders in vLLM; the picker has no
model code to produce them, so a request with one is refused here, naming the part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from picker.errors import InvalidRequest
from picker.tokens.template import ContentFormat

__all__ = ["MediaPart", "to_conversation", "to_tools"]

_TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text",
               "refusal": "refusal", "thinking": "thinking"}
# Fields a text part is made of; any other field travels with an "openai" part.
_PART_FIELDS = frozenset({"type", "text", "refusal", "thinking", "closed", "uuid"})
_BILLING_HEADER = "x-anthropic-billing-header"


class MediaPart(InvalidRequest):
    """A part only the model's own code turns into prompt tokens (an image, audio, video)."""


def to_conversation(messages: Sequence[Any], content_format: ContentFormat) -> list[dict[str, Any]]:
    """The messages as the template sees them; a malformed one is a 400 naming its field."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidRequest("messages must be a non-empty array")
    return [_message(m, i, content_format) for i, m in enumerate(messages)]


def to_tools(tools: Any) -> list[dict[str, Any]] | None:
    """None for no tools; an empty list is none too (chat_completion/protocol.py L985)."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be an array")
    return [_tool(tool, i) for i, tool in enumerate(tools)]


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise InvalidRequest(f"{where} must be a function tool")
    function = tool.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function.name must be a string")
    dumped: dict[str, Any] = {"name": function["name"],
                              "description": function.get("description"),
                              "parameters": function.get("parameters")}
    if function.get("strict") is not None:
        dumped["strict"] = function["strict"]
    return {"type": "function", "function": dumped}


def _message(message: Any, index: int, content_format: ContentFormat) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"{where}.role must be a string")
    role = message["role"]
    content: Any = message.get("content")
    if not (isinstance(content, str) and content_format == "string"
            and not (role == "system" and content.startswith(_BILLING_HEADER))):
        # A string for a "string" template is its own one part joined (most messages: this
        # skips building the parts, ~1/4 of an 8k-token chat's conversion).
        parts = _parts(content, f"{where}.content")
        if role == "system":
            parts = _without_billing_header(parts)
        content = (parts if content_format == "openai"
                   else "\n".join(part["text"] for part in parts))
    result: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        calls = message.get("tool_calls")
        if calls is not None and calls != []:
            result["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
        reasoning = message.get("reasoning")
        if reasoning is None:
            reasoning = message.get("reasoning_content")
        if reasoning is not None:
            result["reasoning"] = result["reasoning_content"] = reasoning
    elif role == "tool":
        if "tool_call_id" in message:
            result["tool_call_id"] = message["tool_call_id"]
        if isinstance(content, list):
            result["content"] = "\n".join(part["text"] for part in content)
    if isinstance(message.get("name"), str):
        result["name"] = message["name"]
    return result


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Text parts in the openai shape, `{"type": "text", "text": ...}` plus extra fields."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of parts")
    parts = []
    for i, part in enumerate(content):
        text: Any
        if isinstance(part, str):
            text, extra = part, {}
        elif isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS:
            text = part.get(_TEXT_PARTS[part["type"]])
            extra = {k: v for k, v in part.items() if k not in _PART_FIELDS}
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise MediaPart(f"{where}[{i}]: the picker cannot tokenize a part of type "
                            f"{kind!r} as the engine does")
        if text is None:
            continue
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}[{i}] text must be a string")
        if text:
            parts.append({"type": "text", "text": text, **extra})
    return parts


def _without_billing_header(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = []
    for part in parts:
        if part["text"].startswith(_BILLING_HEADER):
            rest = part["text"].partition("\n")[2]
            if not rest:
                continue
            part = {**part, "text": rest}
        kept.append(part)
    return kept


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where} must be an array")
    decoded = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or call.get("type", "function") != "function":
            raise InvalidRequest(f"{where}[{i}] must be a function call")
        decoded.append({**call, "function": {**function,
                                             "arguments": _arguments(function.get("arguments"))}})
    return decoded


def _arguments(arguments: Any) -> Any:
    if not arguments:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return {}
    return arguments if isinstance(arguments, dict) else {}
