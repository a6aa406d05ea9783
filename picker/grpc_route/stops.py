"""Stop strings applied to the detokenized text, as SMG applies them on its side.

An engine that receives token ids returns token ids: SMG checks the request's stop strings on
the text it detokenizes (lightseekorg/smg crates/grpc_client/src/sglang_scheduler.rs: it sends
`skip_special_tokens` true because "Detokenization happens on the SMG Rust side
(StopSequenceDecoder)"). The answer ends before the first stop string, which is not part of it
(OpenAI's `stop`); text that may be the start of one is held back until the next piece decides.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopStrings"]


class StopStrings:
    __slots__ = ("_stops", "_held")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may be sent now, and whether a stop string ended the answer."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        found = [index for stop in self._stops if (index := buffer.find(stop)) >= 0]
        if found:
            self._held = ""
            return buffer[:min(found)], True
        keep = max((size for stop in self._stops for size in range(1, len(stop))
                    if buffer.endswith(stop[:size])), default=0)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        """The held text, once the engine has ended the answer without a stop string."""
        held, self._held = self._held, ""
        return held
