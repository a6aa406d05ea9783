"""What a tool parser returns, and the pieces every tool-call family shares.

The compact JSON SMG writes arguments as, and where a marker (or the start of one) begins in
text still streaming in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ToolCall", "ToolFormat", "arguments_json", "hold_at", "loads"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object's text, as OpenAI's function.arguments


class ToolFormat(Protocol):
    """One model family's tool-call syntax (SMG crates/tool_parser/src/parsers/<family>.rs)."""

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """SMG's `parse_complete`: the normal text and the calls in the whole output."""
        ...

    def hold_at(self, text: str) -> int:
        """Where text that may belong to a tool call begins: what comes before it is content
        whatever follows (a prefix of `parse`'s normal text for every continuation)."""
        ...

    @property
    def calls_final(self) -> bool:
        """`parse` of a prefix finds only calls that every continuation finds too (each call
        is closed by its own end marker), so they may be streamed before the output ends."""
        ...


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # serde_json rejects NaN and Infinity


def loads(text: str) -> Any:
    """JSON as serde_json reads it: no NaN/Infinity (ValueError on bad input)."""
    return json.loads(text, parse_constant=_no_constant)


def arguments_json(value: Any) -> str:
    """`serde_json::to_string` of the arguments: compact, keys in input order (SMG builds
    serde_json with `preserve_order`: Cargo.toml:53), non-ASCII characters as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def hold_at(text: str, marker: str) -> int:
    """The index of `marker` in `text`, else of a trailing piece that may grow into it, else
    len(text) (the streaming parsers' `ends_with_partial_token`, helpers.rs)."""
    found = text.find(marker)
    if found >= 0:
        return found
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return len(text) - size
    return len(text)
