"""Salted chained block hashes: a trace shows which prompts share a prefix, never the prompt.

Each trace has its own random key (never written anywhere), and each block's hash is a keyed
BLAKE2b of the previous hash and the block's content: equal leading blocks within one trace
give equal ids, so a replay sees exactly the prefix sharing the fleet saw; across two traces
(two keys) nothing matches, so traces from different fleets cannot be joined, and without the
key a hash cannot be checked against a guessed prompt. Python's `hash()` (what the prefix
index uses, picker.prefix.blocks) would not do: it is unkeyed for ints and its string salt is
per process, not per trace.

Blocks are `block_tokens` token ids when the picker has the prompt's tokens, else
`block_tokens * CHARS_PER_TOKEN` characters of the prompt text: a trace then counts every
block as `block_tokens` tokens, which is exact with a tokenizer and the picker's usual
estimate without one.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Sequence

__all__ = ["CHARS_PER_TOKEN", "TraceHasher"]

# Characters per token when only text is known: the estimate the scorers fall back on
# (picker.policies.scorers._FALLBACK_CHARS_PER_TOKEN).
CHARS_PER_TOKEN = 4
_DIGEST_BYTES = 8
_ID_BYTES = 8  # a token id as the hash reads it (array "q")


class TraceHasher:
    def __init__(self, block_tokens: int, key: bytes | None = None) -> None:
        """`key`: the trace's secret (random when None; tests pass one to compare)."""
        self.block_tokens = block_tokens
        self._key = key if key is not None else os.urandom(32)
        self._keyed = hashlib.blake2b(key=self._key, digest_size=_DIGEST_BYTES)

    def blocks(self, tokens: Sequence[int] | None, text: str) -> list[int]:
        """The complete blocks' chained hashes, of the tokens when known, else of the text
        (cut as characters, not UTF-8 bytes, so a block is the same characters wherever it
        sits)."""
        if tokens is not None:
            data = array("q", tokens).tobytes()  # 8 bytes per id
            size = self.block_tokens * _ID_BYTES
            return self._chain([data[i:i + size] for i in range(0, len(data) - size + 1, size)])
        size = self.block_tokens * CHARS_PER_TOKEN
        return self._chain([text[i:i + size].encode("utf-8", "surrogatepass")
                            for i in range(0, len(text) - size + 1, size)])

    def label(self, text: str) -> str:
        """A keyed hash of a short identifier (a session key), as 16 hex digits."""
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._key,
                               digest_size=_DIGEST_BYTES).hexdigest()

    def _chain(self, blocks: list[bytes]) -> list[int]:
        ids: list[int] = []
        previous = b""
        keyed = self._keyed
        for block in blocks:
            step = keyed.copy()  # the key's block is absorbed once, not per block
            step.update(previous)
            step.update(block)
            previous = step.digest()
            # 63 bits: a non-negative int every JSON reader keeps exact as a 64-bit integer.
            ids.append(int.from_bytes(previous, "big") >> 1)
        return ids
