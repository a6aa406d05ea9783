"""An answer's text as OpenAI's chat fields: reasoning, then tool calls in what remains.

SMG's order (model_gateway/src/routers/grpc/regular/processor.rs:103-190), streamed or whole.

`feed` takes each piece of detokenized text (after stop strings) and returns what it makes
certain; `finish` the rest once the engine is done. The whole answer is `feed(text)` then
`finish()`: the same parser, so streamed and non-streamed answers agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from picker.parsers.calls import ToolCall
from picker.parsers.registry import REASONING_PARSERS, TOOL_PARSERS
from picker.parsers.think import ThinkParser
from picker.parsers.tool_stream import ToolCallStream

__all__ = ["OutputParser", "Parsed"]


@dataclass(slots=True)
class Parsed:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def __iadd__(self, other: Parsed) -> Parsed:
        self.reasoning += other.reasoning
        self.content += other.content
        self.calls += other.calls
        return self


class OutputParser:
    """One answer's parsers; a None name leaves that part as content."""

    __slots__ = ("_think", "_tools")

    def __init__(self, tool_parser: str | None, reasoning_parser: str | None) -> None:
        """Names are checked at configuration (picker.fleet.worker_spec): a KeyError here is
        a bug, not bad input."""
        self._think = None if reasoning_parser is None else ThinkParser(
            REASONING_PARSERS[reasoning_parser])
        self._tools = None if tool_parser is None else ToolCallStream(
            TOOL_PARSERS[tool_parser]())

    @property
    def called(self) -> bool:
        """Tool calls came out: the answer's finish_reason is `tool_calls`."""
        return self._tools is not None and self._tools.called

    def feed(self, text: str) -> Parsed:
        reasoning, content = ("", text) if self._think is None else self._think.feed(text)
        return self._calls(reasoning, content, final=False)

    def finish(self) -> Parsed:
        reasoning, content = ("", "") if self._think is None else self._think.finish()
        return self._calls(reasoning, content, final=True)

    def _calls(self, reasoning: str, content: str, final: bool) -> Parsed:
        if self._tools is None:
            return Parsed(reasoning, content)
        text, calls = self._tools.feed(content)
        parsed = Parsed(reasoning, text, calls)
        if final:
            rest, more = self._tools.finish()
            parsed += Parsed(content=rest, calls=more)
        return parsed
