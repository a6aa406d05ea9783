"""Qwen / Hermes tool calls: JSON between `<tool_call>` and `</tool_call>` lines.

The output: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.

SMG crates/tool_parser/src/parsers/qwen.rs: the calls are every `<tool_call>\n(.*?)\n</tool_call>`
match (:46) whose trimmed JSON has a string `name` (:66-85; `arguments` defaults to {});
a match that does not parse is skipped (:111-119). The normal text is what precedes the first
`<tool_call>` (:98-102), or the whole output when no call parses (:122-124).
"""

from __future__ import annotations

import re

from picker.parsers.calls import ToolCall, arguments_json, hold_at, loads

__all__ = ["QwenFormat"]

_START = "<tool_call>"
_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


class QwenFormat:
    calls_final = True  # each call is closed by its own \n</tool_call>

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(_START)
        if start < 0:
            return text, []
        calls = [call for match in _CALL.finditer(text)
                 if (call := _call(match.group(1))) is not None]
        return (text[:start], calls) if calls else (text, [])

    def hold_at(self, text: str) -> int:
        return hold_at(text, _START)


def _call(body: str) -> ToolCall | None:
    try:
        value = loads(body.strip())
    except ValueError:
        return None
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        return None
    return ToolCall(name, arguments_json(value.get("arguments", {})))
