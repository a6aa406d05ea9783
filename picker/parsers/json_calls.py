"""Plain JSON tool calls: `{"name": ..., "arguments": {...}}` or a list of them.

Anywhere in the output (SMG's `json` parser, crates/tool_parser/src/parsers/json.rs).

The first balanced `{...}` or `[...]` that is valid JSON is the call (or the list of calls),
found by a scan that tracks strings and escapes (:66-127; a quote toggles the string state
even outside a bracket, :80). The name is `name`, else `function` (:132-135), the arguments
`arguments`, else `parameters`, else {} (:140-143). The normal text is the output without
that JSON (:114), even when it names no function (:199-205: the JSON is dropped either way).
"""

from __future__ import annotations

from typing import Any

from picker.parsers.calls import ToolCall, arguments_json, loads

__all__ = ["JsonFormat"]

_PAIRS = {"}": "{", "]": "["}


class JsonFormat:
    calls_final = True  # the scan stops at the first valid JSON: more text cannot change it

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        found = _first_json(text)
        if found is None:
            return text, []
        start, end, value = found
        items = value if isinstance(value, list) else [value]
        calls = [call for item in items if (call := _call(item)) is not None]
        return text[:start] + text[end:], calls

    def hold_at(self, text: str) -> int:
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        return min(starts, default=len(text))


def _first_json(text: str) -> tuple[int, int, Any] | None:
    in_string = escape = False
    stack: list[str] = []
    start: int | None = None
    for index, char in enumerate(text):
        if escape:
            escape = False
        elif char == "\\" and in_string:
            escape = True
        elif char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "{[":
            start = index if start is None else start
            stack.append(char)
        elif char in "}]":
            if not stack or stack.pop() != _PAIRS[char]:
                start = None
                stack.clear()
            elif not stack and start is not None:
                try:
                    return start, index + 1, loads(text[start:index + 1])
                except ValueError:
                    start = None
    return None


def _call(item: Any) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    name = item["name"] if "name" in item else item.get("function")
    if not isinstance(name, str):
        return None
    arguments = item["arguments"] if "arguments" in item else item.get("parameters", {})
    return ToolCall(name, arguments_json(arguments))
