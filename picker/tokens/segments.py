"""SegmentEncoder: the ids of a rendered chat, re-encoding only the text not seen before.

Encoding is ~0.7-1 us per token (an 8k-token chat: 6-8 ms, `llm-picker bench tokenize`), and a
multi-turn chat repeats its history on every request. The `tokenizers` library cuts the input
at its added tokens first and normalizes, pre-tokenizes and encodes each piece between them on
its own (AddedVocabulary::extract_and_normalize); chat templates put a control token around
every message, so the pieces are the messages, and a piece's ids do not depend on the rest of
the prompt. Caching them per piece text gives the same ids - under conditions checked at load,
else every call encodes the whole text:

- every added token matches raw text only (`normalized`, `lstrip`, `rstrip`, `single_word`
  all false), so a regular expression finds the same cuts the library does;
- no pre-tokenizer treats the first piece of the input apart from the others (Metaspace's
  `prepend_scheme: first`, the SentencePiece-style "prefix space on the first word only").
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SegmentEncoder"]

# Pieces kept before the cache starts over; a piece is a message or a template's fixed text.
MAX_PIECES = 4096


class SegmentEncoder:
    def __init__(self, tokenizer: Any, pre_tokenizer: Any, max_pieces: int = MAX_PIECES) -> None:
        """`pre_tokenizer` is tokenizer.json's (the JSON value): the library offers no view of
        a Sequence's members, and serializing the tokenizer again can take minutes."""
        self._tokenizer = tokenizer
        self._max_pieces = max_pieces
        self._pieces: dict[str, list[int]] = {}
        self._ids: dict[str, int] = {}
        self._cuts: re.Pattern[str] | None = None
        added = tokenizer.get_added_tokens_decoder()
        if _cacheable(list(added.values()), pre_tokenizer):
            self._ids = {str(t.content): i for i, t in added.items()}
            # Longest first: at one position the alternation then takes the longest token, as
            # the library's leftmost-longest matcher does.
            alternatives = sorted(self._ids, key=len, reverse=True)
            self._cuts = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    def __len__(self) -> int:
        """Pieces held."""
        return len(self._pieces)

    @property
    def caching(self) -> bool:
        return self._cuts is not None

    def encode(self, text: str) -> list[int]:
        """`tokenizer.encode(text, add_special_tokens=False).ids`, from cached pieces; a piece
        not cached is encoded once, however often it occurs."""
        if self._cuts is None:
            return self._encode(text)
        parts = self._cuts.split(text)
        known = self._pieces
        out: list[int] = []
        stop = self._assemble(parts, 0, out, known, {})
        if stop == len(parts):  # every piece cached (a chat sent again)
            return out
        # The first piece not cached, and every one after it (a chat's new turns).
        new = list(dict.fromkeys(p for p in parts[stop::2] if p and p not in known))
        fresh = {piece: self._encode(piece) for piece in new}
        self._assemble(parts, stop, out, known, fresh)
        for piece, ids in fresh.items():
            if len(known) >= self._max_pieces:
                known.clear()
            known[piece] = ids
        return out

    def _assemble(self, parts: list[str], start: int, out: list[int],
                  known: dict[str, list[int]], fresh: dict[str, list[int]]) -> int:
        """Append the ids of `parts[start:]` to `out`, from the cache or this call's `fresh`
        pieces; return where a piece was in neither (len(parts) when none was). `parts`
        alternate text pieces (even) and added tokens (odd)."""
        ids = self._ids
        for i in range(start, len(parts)):
            piece = parts[i]
            if i % 2:
                out.append(ids[piece])
            elif piece:
                cached = known.get(piece)
                if cached is None:
                    cached = fresh.get(piece)
                    if cached is None:
                        return i
                out += cached
        return len(parts)

    def _encode(self, text: str) -> list[int]:
        """Ids only: `encode_batch_fast` skips the character offsets `encode` computes and the
        picker never reads (tokenizers 0.20, huggingface/tokenizers#1587): ~20% of a never-seen
        chat's encode (`llm-picker bench tokenize`). One text per call: a batch of several
        goes to the library's thread pool, which costs more CPU than it saves here."""
        ids: list[int] = self._tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids
        return ids


def _cacheable(added: list[Any], pre_tokenizer: Any) -> bool:
    if not added or any(getattr(token, flag) for token in added
                        for flag in ("normalized", "lstrip", "rstrip", "single_word")):
        return False
    return not _first_only(pre_tokenizer)


def _first_only(node: Any) -> bool:
    """A Metaspace anywhere in the pre-tokenizer that prefixes only the input's first piece."""
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
            return True
        return any(_first_only(value) for value in node.values())
    if isinstance(node, list):
        return any(_first_only(value) for value in node)
    return False
