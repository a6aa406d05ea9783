"""A replayed prompt's text and engine runs are what their definitions say, made faster.

The definitions, written the obvious way: the text is 2 characters per engine block, bits
0-13 and 14-27 of its hash on top of _TEXT_BASE; the runs are the engine blocks one by one.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.trace.line import TraceLine
from picker_bench.replay.prompts import _TEXT_BASE, BlockTexts, block_text, prompt_shape

_HASHES = st.lists(st.integers(-2**63, 2**63 - 1), max_size=80)


def _defined_text(blocks: list[int]) -> str:
    codes = array("I")
    for block in blocks:
        codes.append(_TEXT_BASE + (block & 0x3FFF))
        codes.append(_TEXT_BASE + ((block >> 14) & 0x3FFF))
    return codes.tobytes().decode("utf-32-le" if sys.byteorder == "little" else "utf-32-be")


@settings(max_examples=300, deadline=None)
@given(blocks=_HASHES)
def test_block_text_is_two_characters_of_each_hash(blocks: list[int]) -> None:
    assert block_text(blocks) == _defined_text(blocks)


_LINE = st.builds(
    lambda ids, tail, extra, size: TraceLine(
        0.0, max(0, (len(ids) - 1) * size + tail) + extra, 1, tuple(ids), block_size=size),
    ids=st.lists(st.integers(0, 12), max_size=6), tail=st.integers(1, 64),
    extra=st.integers(0, 100), size=st.sampled_from([32, 64]))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=8))
def test_runs_and_texts_are_the_engine_blocks(lines: list[TraceLine]) -> None:
    """Mooncake lines (a partial last block) and recorded ones (an unhashed rest), blocks
    shared between lines at different lengths: the runs expand to the engine blocks, and
    the texts made once per trace block equal the text of the engine blocks."""
    texts = BlockTexts(16)
    for index, line in enumerate(lines):
        shape = prompt_shape(line, index, 16)
        blocks = shape.engine_blocks(16)
        runs = shape.engine_runs(16)
        expanded = [hash((key, part)) if isinstance(key, int) else None
                    for key, n in runs for part in range(n)]
        rest = shape.rest_blocks(16)
        assert expanded[:len(expanded) - len(rest)] == blocks[:len(blocks) - len(rest)]
        assert len(expanded) == len(blocks)
        assert texts.of(shape, runs) == _defined_text(blocks)


def _leading_equal(a: list[int], b: list[int]) -> int:
    same = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        same += 1
    return same


def _defined_ids(line: TraceLine, index: int) -> list[int]:
    """Token ids by their definition: id * B + place over the trace blocks, then the line's
    own ids for the rest of the prompt."""
    shape = prompt_shape(line, index, 16)
    ids = [line.hash_ids[t // shape.block] * shape.block + t % shape.block
           for t in range(shape.hashed)]
    return ids + [-(index + 1) * 10**9 - t for t in range(shape.hashed, shape.tokens)]


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_LINE, min_size=2, max_size=6))
def test_prompts_share_as_many_leading_token_ids_as_their_trace_blocks_make_them(
        lines: list[TraceLine]) -> None:
    """What the prefix index reads of the ids: how far two prompts are equal, the same as for
    ids defined as id * B + place (one trace, one block size B)."""
    lines = [replace(line, block_size=lines[0].block_size) for line in lines]
    ids = [prompt_shape(line, i, 16).token_ids() for i, line in enumerate(lines)]
    defined = [_defined_ids(line, i) for i, line in enumerate(lines)]
    for i, mine in enumerate(ids):
        assert len(mine) == len(defined[i])
        for j in range(i + 1, len(lines)):
            assert _leading_equal(mine, ids[j]) == _leading_equal(defined[i], defined[j])
