"""Which of a worker's parsers a chat request gets, as SMG decides it per request.

SMG model_gateway/src/routers/grpc/regular/processor.rs:103-145, :233-256): reasoning when the
worker names a reasoning parser and the request keeps `separate_reasoning` (default true); tool
calls when it names a tool parser, the request lists `tools` and `tool_choice` is not "none".
A `tool_choice` that forces a call ("required", a named function) is met by SMG with
JSON-schema constrained decoding (processor.rs:147-168), which this router does not send: a 400
says so rather than an answer that may not call. A request that may call tools is detokenized
with special tokens kept, whatever it asked: the markers of some families are special tokens
(SMG stages/chat/preparation.rs:264-282).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from picker.errors import InvalidRequest
from picker.parsers import OutputParser
from picker.routing.request import Api

__all__ = ["answer_parser", "may_call_tools"]


def may_call_tools(body: Mapping[str, Any], api: Api) -> bool:
    """A chat request listing tools, with tool_choice not "none"."""
    return api is Api.CHAT and body.get("tools") is not None and body.get("tool_choice") != "none"


def answer_parser(body: Mapping[str, Any], api: Api, tool_parser: str | None,
                  reasoning_parser: str | None) -> OutputParser | None:
    """The parser for this answer, or None when its text is all content."""
    tool_choice = body.get("tool_choice")
    tools = may_call_tools(body, api)
    if tools and (tool_choice == "required" or isinstance(tool_choice, Mapping)):
        raise InvalidRequest("tool_choice that forces a call is not supported for gRPC workers "
                             "yet (only auto or none)", param="tool_choice")
    separate = body.get("separate_reasoning", True)
    if not isinstance(separate, bool):
        raise InvalidRequest("separate_reasoning must be a boolean", param="separate_reasoning")
    tool = tool_parser if tools else None
    reasoning = reasoning_parser if separate else None
    if api is not Api.CHAT or (tool is None and reasoning is None):
        return None
    return OutputParser(tool, reasoning)
