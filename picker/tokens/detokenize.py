"""Incremental detokenization: text out as token ids stream in, never half a character.

A byte-level BPE splits a multi-byte UTF-8 character over several tokens; decoding each token
alone would emit U+FFFD for the pieces. The `tokenizers` library's DecodeStream (tokenizers
0.21+, bindings/python/src/decoders.rs `DecodeStream::step`) decodes a sliding window of ids and
returns text only once it is complete - the prefix/read offsets vLLM's and SMG's incremental
detokenizers keep by hand - so what the client sees equals decoding all ids at once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Detokenizer"]


class Detokenizer:
    """One generation's text, step by step; `skip_special_tokens` as the engines' default."""

    __slots__ = ("_tokenizer", "_stream")

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, ids: list[int]) -> str:
        """The text these new ids complete (maybe empty: a character still incomplete)."""
        out = []
        for token in ids:
            text = self._stream.step(self._tokenizer, token)
            if text:
                out.append(text)
        return "".join(out)
