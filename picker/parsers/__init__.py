"""Tool-call and reasoning parsers, named per worker as SMG names them.

A model's output text as OpenAI's `content`, `reasoning_content` and `tool_calls`, streamed or
whole (output.py; one module per model family's syntax, registry.py holds the names)."""

from picker.parsers.calls import ToolCall
from picker.parsers.output import OutputParser, Parsed
from picker.parsers.registry import REASONING_PARSERS, TOOL_PARSERS, check_parser_name
from picker.parsers.tool_stream import call_id

__all__ = ["REASONING_PARSERS", "TOOL_PARSERS", "OutputParser", "Parsed", "ToolCall", "call_id",
           "check_parser_name"]
