"""One answer's tool calls as its text streams in, in OpenAI's streaming shape.

A family's `ToolFormat` says how the whole output splits into normal text and calls (SMG's
`parse_complete`); this drives it incrementally so that any split of the output gives what the
whole output gives: content that cannot belong to a call goes out at once, the rest is held;
a call goes out once no continuation can change it (formats whose calls close with their own
marker) or when the output ends. SMG streams a call's arguments as partial JSON grows; here
each call's arguments arrive as one fragment after its name, the same final text.
"""

from __future__ import annotations

import uuid

from picker.parsers.calls import ToolCall, ToolFormat

__all__ = ["ToolCallStream", "call_id"]


def call_id() -> str:
    """OpenAI's `call_` + 24 hex digits (SMG model_gateway/src/routers/grpc/utils/
    chat_utils.rs:713-735: the first 24 of a UUID's hex; Kimi's own format is not built)."""
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallStream:
    __slots__ = ("_format", "_text", "_sent", "_calls")

    def __init__(self, tool_format: ToolFormat) -> None:
        self._format = tool_format
        self._text = ""
        self._sent = 0  # characters of _text sent as content
        self._calls = 0  # calls sent

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """The content and the calls this piece makes certain."""
        self._text += text
        hold = self._format.hold_at(self._text)
        content = ""
        if hold > self._sent:
            content, self._sent = self._text[self._sent:hold], hold
        calls: list[ToolCall] = []
        if self._format.calls_final and hold < len(self._text):
            calls = self._new_calls(self._format.parse(self._text)[1])
        return content, calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What the held text turns out to be, once the output has ended."""
        normal, calls = self._format.parse(self._text)
        sent = self._text[:self._sent]
        assert normal.startswith(sent), "a format's hold_at let out text parse keeps back"
        self._sent = len(self._text)
        return normal[len(sent):], self._new_calls(calls)

    def _new_calls(self, calls: list[ToolCall]) -> list[ToolCall]:
        new = calls[self._calls:]
        self._calls = len(calls)
        return new
