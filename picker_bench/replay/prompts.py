"""A trace line's prompt as the simulated engines and the picker see it, built from its block
hashes: no text exists, only which blocks two prompts share.

Block `k` of a line covers tokens [k*B, (k+1)*B) of its prompt (B = its `block_size`). A
Mooncake line's last id is the partial tail (`len(hash_ids) == ceil(input_length / B)`,
kvcache-ai/Mooncake FAST25-release/README.md); a recorded line hashes complete blocks only,
the rest of its prompt being its own. Recorded without a tokenizer, a block's B tokens are
an estimate (picker.trace.hashing) and may exceed the engine's count: the prompt is then as
long as its blocks, so that cached and prompt tokens keep their ratio.

- The engine: its cache blocks (`block_tokens` S, dividing B) are identified by the trace
  block and their place in it; the unhashed rest by the request and place, so they match
  nothing. No token list is built: an engine only needs its blocks and the length, given as
  runs - a trace block's B/S blocks, the rest's blocks - to its run cache
  (picker_sim.run_cache), which holds a trace block as one entry, not B/S.
- The picker: token ids (the prefix index hashes them with its own block size): the trace
  block's id at the block's first token and its place in the block (mod 256) at its other
  B-1, and negative ids for the unhashed rest. Two prompts then have equal first L tokens
  exactly when their blocks starting before L are equal (the index cannot tell these ids from
  any others with that property, such as id * B + offset: its matches depend only on which
  hashes are equal), and a prompt's list is a repeated pattern and one slice assignment, not a
  new int per token; and a text
  for the policies that match text (cache_aware's radix tree): 2 characters per engine block,
  28 bits of its hash, so texts share a prefix where engine blocks do (two different blocks
  after the same prefix look alike once in 2^28). A trace block's text is made once per
  replay (`BlockTexts`): most blocks recur, and a replay would otherwise hash every engine
  block of every prompt again. For a policy that reads only the text's length (all but
  those whose params say `matches_text()`), a text of that length, all one character
  (`length_text`): making the real one was an eighth of a prefix_cache replay.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Hashable
from functools import cache
from itertools import product

from picker.trace.line import TraceLine

__all__ = ["BlockTexts", "PromptShape", "block_text", "length_text", "prompt_shape"]

_TEXT_BASE = 0x4E00  # CJK ideographs: 2^14 code points from here are all letters
_FILL = chr(_TEXT_BASE)
_TEXTS_KEPT = 1 << 18  # trace blocks' texts kept at most (~60 MB)


class PromptShape:
    """One line's prompt: its length and the part its hash ids cover."""

    __slots__ = ("tokens", "hashed", "ids", "block", "index")

    def __init__(self, tokens: int, hashed: int, ids: tuple[int, ...], block: int,
                 index: int) -> None:
        self.tokens = tokens
        self.hashed = hashed
        self.ids = ids
        self.block = block
        self.index = index  # the line's place in the trace: its own blocks are unique

    def engine_blocks(self, block_tokens: int) -> list[int]:
        """The engine's cache block hashes for the prompt's complete blocks: block `part` of
        trace block `block_id` is hash((block_id, part)), the rest's hash((-1, index, start))."""
        per = self.block // block_tokens
        blocks = list(map(hash, product(self.ids, range(per))))
        del blocks[self.hashed // block_tokens:]
        return blocks + self.rest_blocks(block_tokens)

    def engine_runs(self, block_tokens: int) -> list[tuple[Hashable, int]]:
        """`engine_blocks` as runs for picker_sim.run_cache: (trace block id, its blocks), and
        ((-1, index), the rest's blocks) - the same blocks, the same identities."""
        per, whole = self.block // block_tokens, self.hashed // block_tokens
        runs: list[tuple[Hashable, int]] = [(block_id, per) for block_id in self.ids[:whole // per]]
        if whole % per:
            runs.append((self.ids[whole // per], whole % per))
        rest = (self.tokens - self.hashed) // block_tokens
        if rest:
            runs.append(((-1, self.index), rest))
        return runs

    def rest_blocks(self, block_tokens: int) -> list[int]:
        """The engine's block hashes for the part of the prompt no trace block covers."""
        return [hash((-1, self.index, start))
                for start in range(self.hashed, self.tokens - block_tokens + 1, block_tokens)]

    def token_ids(self) -> list[int]:
        """Token ids for the picker's prefix index."""
        blocks = -(-self.hashed // self.block)  # trace blocks the hashed part starts
        ids = list(_filler(self.block))
        ids *= blocks
        del ids[self.hashed:]
        ids[::self.block] = self.ids[:blocks]
        base = -(self.index << 40) - 1
        ids.extend(range(base - self.hashed, base - self.tokens, -1))
        return ids


@cache
def _filler(block: int) -> tuple[int, ...]:
    """The ids of a trace block's tokens after its first: each token's place in the block, mod
    256. Like any ids fixed by the place alone, they keep two prompts equal exactly as far as
    their trace blocks are; and CPython's cached small ints they are, 256 objects rather than
    the one 0 that every copy, slice and free of a prompt's ids then counted references on, one
    after the other (the prefix index slices the ids into its blocks and hashes them: that,
    with building the ids, went from ~160 to ~110 us per prompt of this trace)."""
    return tuple(place & 0xFF for place in range(block))


def prompt_shape(line: TraceLine, index: int, block_tokens: int) -> PromptShape:
    """Raises ValueError when the engine's block does not divide the trace's."""
    size, count, length = line.block_size, len(line.hash_ids), line.input_length
    if size % block_tokens:
        raise ValueError(f"the engines' block_tokens ({block_tokens}) must divide the trace's "
                         f"block_size ({size})")
    if count == -(-length // size):  # Mooncake's convention: the last id is the partial tail
        return PromptShape(length, length, line.hash_ids, size, index)
    return PromptShape(max(length, count * size), count * size, line.hash_ids, size, index)


def block_text(blocks: list[int]) -> str:
    """A text standing for engine blocks: 2 characters of 14 bits of each block's hash (bits
    0-13, then 14-27), code points _TEXT_BASE + v.

    Made with byte operations over all blocks at once rather than a loop per block (half of
    a prefix policy's replay went to that loop): the code point of v is the UTF-16LE pair
    (v & 0xFF, 0x4E + (v >> 8)), and with b0..b3 the low bytes of a hash, the first v is
    (b0, b1 & 0x3F) and the second ((b1 >> 6) | (b2 & 0x3F) << 2, (b2 >> 6) | (b3 & 0x0F) << 2).
    """
    raw = array("q", blocks)
    if sys.byteorder == "big":
        raw.byteswap()
    data = raw.tobytes()
    b1, b2, b3 = data[1::8], data[2::8], data[3::8]
    pairs = bytearray(4 * len(blocks))
    pairs[0::4] = data[0::8]
    pairs[1::4] = b1.translate(_FIRST_HIGH)
    pairs[2::4] = _either(b1.translate(_TOP_2), b2.translate(_LOW_6_UP_2))
    pairs[3::4] = _either(b2.translate(_TOP_2), b3.translate(_LOW_4_UP_2)).translate(_PAGE)
    return pairs.decode("utf-16-le")


_PAGE = bytes(((_TEXT_BASE >> 8) + b) & 0xFF for b in range(256))  # 0x4E + b, b < 0x40
_FIRST_HIGH = bytes((_TEXT_BASE >> 8) + (b & 0x3F) for b in range(256))
_TOP_2 = bytes(b >> 6 for b in range(256))
_LOW_6_UP_2 = bytes((b & 0x3F) << 2 for b in range(256))
_LOW_4_UP_2 = bytes((b & 0x0F) << 2 for b in range(256))


def _either(one: bytes, other: bytes) -> bytes:
    """Bytewise OR of two equally long byte strings."""
    return (int.from_bytes(one, "little") | int.from_bytes(other, "little")).to_bytes(
        len(one), "little")


def length_text(runs: list[tuple[Hashable, int]]) -> str:
    """A text as long as `BlockTexts.of` makes for `runs` (2 characters per engine block)."""
    return _FILL * (2 * sum(blocks for _, blocks in runs))


class BlockTexts:
    """`block_text(shape.engine_blocks(S))` of prompts, each trace block's text made once (the
    blocks a prompt brings new in one pass: a call per block would cost as much again)."""

    def __init__(self, block_tokens: int) -> None:
        self._block_tokens = block_tokens
        self._made: dict[int, str] = {}  # trace block id -> the text of all its blocks

    def of(self, shape: PromptShape, runs: list[tuple[Hashable, int]]) -> str:
        """`runs`: shape.engine_runs(S)."""
        made = self._made
        per = shape.block // self._block_tokens
        new = [block_id for block_id, blocks in runs if isinstance(block_id, int)
               and len(made.get(block_id, "")) < 2 * blocks]
        if new:
            if len(made) > _TEXTS_KEPT:
                made.clear()  # a day of traffic has millions of blocks: bound the memory
            text = block_text(list(map(hash, product(new, range(per)))))
            made.update(zip(new, (text[i:i + 2 * per] for i in range(0, len(text), 2 * per)),
                            strict=True))
        pieces = [made[block_id][:2 * blocks] if isinstance(block_id, int)
                  else block_text(shape.rest_blocks(self._block_tokens))  # the request's own
                  for block_id, blocks in runs]
        return "".join(pieces)

