"""Reasoning between `<think>` and `</think>`, split from the answer as its text streams in.

SMG crates/reasoning_parser/src/parsers/base.rs: outside reasoning, `<think>` opens it (and is
dropped, once); inside, `</think>` closes it and what follows is the answer, verbatim (:96-128);
a model whose prompt already opened the block starts inside (`always_in_reasoning`: deepseek_r1
and qwen3_thinking, factory.rs:126-133; qwen3 starts outside, :129). An output that never closes
the block is all reasoning (:68-71). Text that may be the start of a tag is held until the next
piece decides, so every split of the output gives the same result.

Where SMG's whole-output parser (`detect_and_parse_reasoning`, :53-81) differs from its
streaming one, this follows the streaming one: text before a `<think>` that is not at the start
is content, and after `</think>` a further `<think>` is text.
"""

from __future__ import annotations

__all__ = ["ThinkParser"]

_OPEN, _CLOSE = "<think>", "</think>"


class ThinkParser:
    __slots__ = ("_inside", "_opened", "_held")

    def __init__(self, starts_inside: bool) -> None:
        self._inside = starts_inside
        self._opened = False  # a <think> was dropped, or the block closed: no more tags
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) this piece makes certain."""
        buffer = self._held + text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            tags = self._tags()
            found = min(((i, tag) for tag in tags if (i := buffer.find(tag)) >= 0),
                        default=None)
            out = reasoning if self._inside else content
            if found is None:
                keep = max((size for tag in tags for size in range(1, len(tag))
                            if buffer.endswith(tag[:size])), default=0)
                out.append(buffer[:len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                return "".join(reasoning), "".join(content)
            index, tag = found
            out.append(buffer[:index])
            buffer = buffer[index + len(tag):]
            self._inside = tag == _OPEN
            self._opened = True

    def finish(self) -> tuple[str, str]:
        """The held text, once the output has ended."""
        held, self._held = self._held, ""
        return (held, "") if self._inside else ("", held)

    def _tags(self) -> tuple[str, ...]:
        if self._inside:
            return (_CLOSE,) if self._opened else (_OPEN, _CLOSE)
        return () if self._opened else (_OPEN,)
