"""Mistral tool calls: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`.

SMG crates/tool_parser/src/parsers/mistral.rs.

The array starts at the first `[TOOL_CALLS] [` and ends at its matching `]`, found by counting
brackets outside strings (a backslash escapes the next character anywhere, :107-156). It must
be valid JSON, else the whole output is normal text (:229-236); its objects with a string
`name` are the calls, arguments from `arguments` (default {}, :182-203). The normal text is
what precedes the marker (:222-227), even when no object names a function. No marker or no
closed array: the whole output is normal text (:216-218, :237-239).
"""

from __future__ import annotations

from typing import Any

from picker.parsers.calls import ToolCall, arguments_json, hold_at, loads

__all__ = ["MistralFormat"]

_MARKER = "[TOOL_CALLS]"
_START = "[TOOL_CALLS] ["


class MistralFormat:
    calls_final = True  # the first array, once closed, is the answer's calls

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(_START)
        end = _array_end(text, start + len(_START) - 1) if start >= 0 else None
        if end is None:
            return text, []
        try:
            value = loads(text[start + len(_START) - 1:end])
        except ValueError:
            return text, []
        items = value if isinstance(value, list) else [value]
        return text[:start], [call for item in items if (call := _call(item)) is not None]

    def hold_at(self, text: str) -> int:
        return hold_at(text, _MARKER)


def _array_end(text: str, begin: int) -> int | None:
    depth = 0
    in_string = escape = False
    for index in range(begin, len(text)):
        char = text[index]
        if escape:
            escape = False
        elif char == "\\":
            escape = True
        elif char == '"':
            in_string = not in_string
        elif not in_string and char in "[]":
            depth += 1 if char == "[" else -1
            if depth == 0:
                return index + 1
    return None


def _call(item: Any) -> ToolCall | None:
    name = item.get("name") if isinstance(item, dict) else None
    if not isinstance(name, str):
        return None
    return ToolCall(name, arguments_json(item.get("arguments", {})))
