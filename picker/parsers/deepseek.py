"""DeepSeek V3 tool calls, `<｜tool▁calls▁begin｜>...` blocks.

SMG crates/tool_parser/src/parsers/deepseek.rs; the output looks like:

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    {...}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

Each `<｜tool▁call▁begin｜>...<｜tool▁call▁end｜>` block (:58) is one call when its type is
`function`, its trimmed name is not empty and its trimmed JSON parses (:61, :86-131; JSON that
is not an object becomes {"value": it}, :115-120); other blocks are skipped. The normal text
precedes `<｜tool▁calls▁begin｜>` (:147-152), or is the whole output when no call parses
(:167-169) or the marker is absent (:143-145, :317-319).
"""

from __future__ import annotations

import re

from picker.parsers.calls import ToolCall, arguments_json, hold_at, loads

__all__ = ["DeepSeekFormat"]

_START = "<｜tool▁calls▁begin｜>"
_BLOCK = re.compile(r"<｜tool▁call▁begin｜>.*?<｜tool▁call▁end｜>", re.DOTALL)
_DETAIL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)\n```json\n(.*?)\n```"
                     r"<｜tool▁call▁end｜>", re.DOTALL)


class DeepSeekFormat:
    calls_final = True  # each call is closed by its own <｜tool▁call▁end｜>

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(_START)
        if start < 0:
            return text, []
        calls = [call for block in _BLOCK.finditer(text)
                 if (call := _call(block.group(0))) is not None]
        return (text[:start], calls) if calls else (text, [])

    def hold_at(self, text: str) -> int:
        return hold_at(text, _START)


def _call(block: str) -> ToolCall | None:
    match = _DETAIL.search(block)
    if match is None or match.group(1) != "function" or not match.group(2).strip():
        return None
    try:
        value = loads(match.group(3).strip())
    except ValueError:
        return None
    return ToolCall(match.group(2).strip(), arguments_json(
        value if isinstance(value, dict) else {"value": value}))
