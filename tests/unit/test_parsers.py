"""picker.parsers: each family's tool-call syntax and the <think> parsers, whole and streamed.

Expected results are SMG's for the same output (each family module cites the lines); the
streamed result, the output split at every character, must equal the whole one."""

from __future__ import annotations

import pytest

from picker.parsers import REASONING_PARSERS, TOOL_PARSERS, OutputParser, Parsed, ToolCall

Case = tuple[str | None, str | None, str, Parsed]

W = ToolCall("get_weather", '{"city":"Paris","unit":"°C"}')
T = ToolCall("time", "{}")
DS_CALL = ("<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
           '{"city": "Paris", "unit": "°C"}\n```<｜tool▁call▁end｜>')

CASES: list[Case] = [
    # qwen / hermes
    ("qwen", None, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
     '"unit": "°C"}}\n</tool_call>\n<tool_call>\n{"name": "time"}\n</tool_call>',
     Parsed("", "Sure.\n", [W, T])),
    ("qwen", None, "no call here", Parsed("", "no call here")),
    ("qwen", None, "<tool_call>\n{not json}\n</tool_call>",  # nothing parses: all content
     Parsed("", "<tool_call>\n{not json}\n</tool_call>")),
    ("qwen", None, 'a<tool_call>\n{"name": "time"}\n</tool_call> tail dropped',
     Parsed("", "a", [T])),
    # json
    ("json", None, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "°C"}}',
     Parsed("", "", [W])),
    ("json", None, 'Call: [{"name": "time", "arguments": {}}, {"function": "time"}] done',
     Parsed("", "Call:  done", [T, T])),
    ("json", None, '{"a": 1} is dropped though it names no function',
     Parsed("", " is dropped though it names no function")),
    ("json", None, "{broken} text", Parsed("", "{broken} text")),
    # llama 3
    ("llama", None, 'Let me check.<|python_tag|>{"name": "get_weather", "parameters": '
     '{"city": "Paris", "unit": "°C"}}', Parsed("", "Let me check.", [W])),
    ("llama", None, ' {"name": "time", "parameters": {}}; {"name": "get_weather", '
     '"parameters": {"city": "Paris", "unit": "°C"}}', Parsed("", "", [T, W])),
    ("llama", None, "Hello {not a call", Parsed("", "Hello {not a call")),
    ("llama", None, '{"no_name": 1}', Parsed("", '{"no_name": 1}')),
    # mistral
    ("mistral", None, 'OK [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": '
     '"Paris", "unit": "°C"}}, {"name": "time", "arguments": {}}]', Parsed("", "OK ", [W, T])),
    ("mistral", None, "[TOOL_CALLS] [unclosed", Parsed("", "[TOOL_CALLS] [unclosed")),
    ("mistral", None, "[TOOL_CALLS] [{bad}]", Parsed("", "[TOOL_CALLS] [{bad}]")),
    # deepseek v3
    ("deepseek", None, "Checking.<｜tool▁calls▁begin｜>" + DS_CALL
     + "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>time\n```json\n[]\n```"
       "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
     Parsed("", "Checking.", [W, ToolCall("time", '{"value":[]}')])),
    ("deepseek", None, DS_CALL, Parsed("", DS_CALL)),  # no calls-begin marker: text
    # <think> reasoning
    (None, "qwen3", "<think>why</think> answer", Parsed("why", " answer")),
    (None, "qwen3", "plain answer </think>", Parsed("", "plain answer </think>")),
    (None, "qwen3", "<think>cut off", Parsed("cut off", "")),
    (None, "deepseek_r1", "why</think>answer", Parsed("why", "answer")),
    (None, "deepseek_r1", "<think>why</think>answer <think>", Parsed("why", "answer <think>")),
    (None, "qwen3_thinking", "all reasoning", Parsed("all reasoning", "")),
    # both: reasoning first, tool calls in what follows
    ("qwen", "qwen3", '<think>use a tool</think>\n\n<tool_call>\n{"name": "time"}\n</tool_call>',
     Parsed("use a tool", "\n\n", [T])),
]


def whole(tool: str | None, reasoning: str | None, text: str) -> Parsed:
    parser = OutputParser(tool, reasoning)
    parsed = parser.feed(text)
    parsed += parser.finish()
    return parsed


def streamed(tool: str | None, reasoning: str | None, pieces: list[str]) -> Parsed:
    parser, parsed = OutputParser(tool, reasoning), Parsed()
    for piece in pieces:
        parsed += parser.feed(piece)
    parsed += parser.finish()
    return parsed


@pytest.mark.parametrize(("tool", "reasoning", "text", "expected"), CASES)
def test_the_whole_output_parses_as_smg_parses_it(tool: str | None, reasoning: str | None,
                                                  text: str, expected: Parsed) -> None:
    assert whole(tool, reasoning, text) == expected


@pytest.mark.parametrize(("tool", "reasoning", "text", "expected"), CASES)
def test_any_split_of_the_output_streams_the_same_result(
        tool: str | None, reasoning: str | None, text: str, expected: Parsed) -> None:
    for cut in range(len(text) + 1):
        assert streamed(tool, reasoning, [text[:cut], text[cut:]]) == expected, cut
    assert streamed(tool, reasoning, list(text)) == expected


def test_content_streams_before_the_output_ends() -> None:
    """Text that cannot start a call goes out at once; a partial marker waits."""
    parser = OutputParser("qwen", "qwen3")
    assert parser.feed("<think>a") == Parsed("a", "")
    assert parser.feed("</think>Hello <tool") == Parsed("", "Hello ")
    assert parser.feed('_call>\n{"name": "time"}\n</tool_call>') == Parsed("", "", [T])
    assert parser.called
    assert parser.finish() == Parsed()


def test_a_call_closed_by_its_own_marker_streams_before_the_end() -> None:
    parser = OutputParser("deepseek", None)
    assert parser.feed("<｜tool▁calls▁begin｜>" + DS_CALL).calls == [W]
    assert parser.finish() == Parsed()


def test_registry_names_are_smgs() -> None:
    assert set(TOOL_PARSERS) == {"json", "llama", "qwen", "mistral", "deepseek"}
    assert set(REASONING_PARSERS) == {"qwen3", "qwen3_thinking", "deepseek_r1", "deepseek_v31"}
