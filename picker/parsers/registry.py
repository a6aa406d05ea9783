"""The parser names a worker may set (`tool_parser`, `reasoning_parser`), as SMG names them.

crates/tool_parser/src/factory.rs:311-347, crates/reasoning_parser/src/factory.rs:118-175: one
table per kind, the only place a name is written."""

from __future__ import annotations

from collections.abc import Callable, Collection

from picker.parsers.calls import ToolFormat
from picker.parsers.deepseek import DeepSeekFormat
from picker.parsers.json_calls import JsonFormat
from picker.parsers.llama import LlamaFormat
from picker.parsers.mistral import MistralFormat
from picker.parsers.qwen import QwenFormat

__all__ = ["REASONING_PARSERS", "TOOL_PARSERS", "check_parser_name"]

TOOL_PARSERS: dict[str, Callable[[], ToolFormat]] = {
    "json": JsonFormat, "llama": LlamaFormat, "qwen": QwenFormat, "mistral": MistralFormat,
    "deepseek": DeepSeekFormat,
}
# name -> whether the output starts inside the reasoning block (the prompt opened it).
# deepseek_v31 is qwen3's configuration under its own name (factory.rs:150-160).
REASONING_PARSERS: dict[str, bool] = {
    "qwen3": False, "deepseek_v31": False, "qwen3_thinking": True, "deepseek_r1": True,
}


def check_parser_name(name: str | None, table: Collection[str], field: str) -> str | None:
    """`name` when the table holds it; a ValueError naming the field and the choices if not."""
    if name is not None and name not in table:
        raise ValueError(f"{field} {name[:100]!r} is not a known parser: one of "
                         f"{', '.join(sorted(table))}")
    return name
