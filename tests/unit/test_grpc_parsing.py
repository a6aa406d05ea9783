"""picker.grpc_route.parsing: which parsers a chat request gets, as SMG decides per request."""

from __future__ import annotations

from typing import Any

import pytest

from picker.errors import InvalidRequest
from picker.grpc_route.parsing import answer_parser, may_call_tools
from picker.routing.request import Api

TOOLS = [{"type": "function", "function": {"name": "f"}}]
CALL = '<tool_call>\n{"name": "f"}\n</tool_call>'


def parsed(body: dict[str, Any], api: Api = Api.CHAT) -> tuple[str, int] | None:
    """(content, calls) the request's parser makes of <think>r</think> + a call."""
    parser = answer_parser(body, api, "qwen", "qwen3")
    if parser is None:
        return None
    out = parser.feed("<think>r</think>" + CALL)
    out += parser.finish()
    return out.content, len(out.calls)


@pytest.mark.parametrize(("body", "api", "expected"), [
    ({"tools": TOOLS}, Api.CHAT, ("", 1)),
    ({"tools": TOOLS, "tool_choice": "auto"}, Api.CHAT, ("", 1)),
    ({"tools": TOOLS, "tool_choice": "none"}, Api.CHAT, (CALL, 0)),  # reasoning only
    ({}, Api.CHAT, (CALL, 0)),
    ({"separate_reasoning": False}, Api.CHAT, None),  # neither part applies
    ({"tools": TOOLS}, Api.COMPLETIONS, None),
])
def test_tools_and_reasoning_apply_as_the_request_asks(body: dict[str, Any], api: Api,
                                                       expected: tuple[str, int] | None) -> None:
    assert parsed(body, api) == expected
    assert may_call_tools(body, api) == (expected == ("", 1))


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}}},
     "tool_choice"),
    ({"separate_reasoning": "yes"}, "separate_reasoning"),
])
def test_what_the_router_cannot_honour_is_a_400_naming_the_field(body: dict[str, Any],
                                                                 param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        answer_parser(body, Api.CHAT, "qwen", "qwen3")
    assert caught.value.param == param


def test_a_worker_without_parsers_leaves_the_text_alone() -> None:
    assert answer_parser({"tools": TOOLS}, Api.CHAT, None, None) is None
