"""Llama 3.x tool calls: `<|python_tag|>{"name": ..., "parameters": {...}}`.

Or the JSON alone at the start of the output; several calls separated by `;` (SMG
crates/tool_parser/src/parsers/llama.rs).

After `<|python_tag|>` (normal text: what precedes it, :59-69), or from the start when the
output begins with `{` after whitespace (:138-139), the rest is one JSON object, or, when it
holds a `;` anywhere, `;`-separated objects each parsed alone, bad ones skipped (:96-122,
:146-147). A call has a string `name`; its arguments are `parameters` (default {}, :72-94).
No call parsed: the whole output is normal text (:164-166).
"""

from __future__ import annotations

from picker.parsers.calls import ToolCall, arguments_json, hold_at, loads

__all__ = ["LlamaFormat"]

_TAG = "<|python_tag|>"


class LlamaFormat:
    calls_final = False  # the JSON after the tag may go on: calls are known at the end only

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        tag = text.find(_TAG)
        if tag >= 0:
            normal, body = text[:tag], text[tag + len(_TAG):]
        elif text.lstrip().startswith("{"):
            normal, body = "", text
        else:
            return text, []
        parts = body.split(";") if ";" in body else [body]
        calls = [call for part in parts if part.strip()
                 and (call := _call(part.strip())) is not None]
        return (normal, calls) if calls else (text, [])

    def hold_at(self, text: str) -> int:
        stripped = text.lstrip()
        if not stripped or stripped.startswith("{"):
            return 0  # the output may be a bare JSON call
        return hold_at(text, _TAG)


def _call(part: str) -> ToolCall | None:
    try:
        value = loads(part)
    except ValueError:
        return None
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        return None
    return ToolCall(name, arguments_json(value.get("parameters", {})))
