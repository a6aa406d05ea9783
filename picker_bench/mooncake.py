"""A routing workload built from a Mooncake FAST'25 trace (`bench routing --workload mooncake`).

The format (kvcache-ai/Mooncake, FAST25-release/README.md:1-13, and the released
FAST25-release/traces/*.jsonl): one JSON object per line with `timestamp` (ms since the
trace's start), `input_length` and `output_length` (tokens) and `hash_ids`, one id per
512-token block of the prompt, the last one partial (`len(hash_ids) == ceil(input_length /
512)` on every line of the released conversation trace; 6955 tokens, 14 ids in the README's
sample). Two prompts sharing their leading ids share that prefix. No text is released.

Turned into chat requests for the simulator: each hash id becomes a fixed run of words
(`tokens_per_block` simulator tokens, the sims tokenizing by word), the same id always the
same words, so shared ids are shared cache blocks; a prompt is its blocks' words, the last
block cut in proportion to its share of 512 tokens. Output lengths shrink by the same factor.
Arrival times keep the trace's shape and are rescaled to a mean `rate` per second. A
request's group (for stickiness and the cold/warm split) is its first two hash ids: in the
conversation trace every prompt starts with block 0, and a conversation's turns share the
block after it.

`synthetic_trace` writes the small sample shipped for tests (picker_bench/data/); it is
generated, never the released trace.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picker.trace.line import json_object_line
from picker_bench.workload import Workload

__all__ = ["SAMPLE_TRACE", "TraceRecord", "read_trace", "synthetic_trace", "trace_workload"]

TRACE_BLOCK_TOKENS = 512
SAMPLE_TRACE = Path(__file__).parent / "data" / "mooncake_synthetic.jsonl"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class TraceRecord:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def _count(where: str, data: dict[str, Any], name: str, minimum: int) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: '{name}' must be an integer >= {minimum}, not {value!r}")
    return value


def parse_record(line: str, where: str) -> TraceRecord:
    """One trace line; errors name the line and the field."""
    data = json_object_line(line, where)
    timestamp = data.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or timestamp < 0:
        raise ValueError(f"{where}: 'timestamp' must be a number of ms >= 0, not {timestamp!r}")
    length = _count(where, data, "input_length", 1)
    output = _count(where, data, "output_length", 0)
    ids = data.get("hash_ids")
    if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{where}: 'hash_ids' must be a list of block ids (integers >= 0)")
    if len(ids) != math.ceil(length / TRACE_BLOCK_TOKENS):
        raise ValueError(f"{where}: 'hash_ids' has {len(ids)} ids; {length} input tokens are "
                         f"{math.ceil(length / TRACE_BLOCK_TOKENS)} blocks of "
                         f"{TRACE_BLOCK_TOKENS}")
    return TraceRecord(float(timestamp), length, output, tuple(ids))


def read_trace(path: Path, limit: int | None = None) -> list[TraceRecord]:
    """The first `limit` records (all with None) of a trace file, in file order."""
    records: list[TraceRecord] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(parse_record(line, f"{path}:{number}"))
    if not records:
        raise ValueError(f"{path}: no trace records")
    return records


def trace_workload(records: list[TraceRecord], *, rate: float, tokens_per_block: int = 64,
                   chars_per_token: int = 6, seed: int = 0) -> Workload:
    """Chat requests for the simulator, `tokens_per_block` simulator tokens per trace block,
    arriving at a mean `rate` per second in the trace's own rhythm."""
    vocab_rng = random.Random(seed)
    vocab = sorted({"".join(vocab_rng.choices(_LETTERS, k=max(1, chars_per_token - 1)))
                    for _ in range(5000)})
    blocks: dict[int, list[str]] = {}

    def words(block: int) -> list[str]:
        found = blocks.get(block)
        if found is None:
            found = blocks[block] = random.Random(f"{seed}:{block}").choices(
                vocab, k=tokens_per_block)
        return found

    scale = tokens_per_block / TRACE_BLOCK_TOKENS
    bodies, keys = [], []
    turns: dict[tuple[int, ...], int] = {}
    for record in records:
        *full, last = record.hash_ids
        tail = record.input_length - TRACE_BLOCK_TOKENS * len(full)
        prompt = [word for block in full for word in words(block)]
        prompt += words(last)[:max(1, round(tail * scale))]
        bodies.append({"model": "sim-model", "stream": True,
                       "max_tokens": max(1, round(record.output_length * scale)),
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": " ".join(prompt)}]})
        group = record.hash_ids[:2]
        keys.append(("h" + "-".join(map(str, group)), turns.get(group, 0)))
        turns[group] = turns.get(group, 0) + 1
    start = records[0].timestamp_ms
    span = (records[-1].timestamp_ms - start) / 1000
    stretch = (len(records) / rate) / span if span > 0 else 0.0
    arrivals = [(r.timestamp_ms - start) / 1000 * stretch if stretch else i / rate
                for i, r in enumerate(records)]
    return Workload(bodies, arrivals, keys)


def synthetic_trace(seed: int = 35, requests: int = 240) -> Iterable[str]:
    """Lines in the trace's format with its structure (a block every prompt shares,
    conversations resending their history, one-off prompts, arrivals in 3 s ticks), made up
    here: the sample the tests and the recorded benchmark read."""
    rng = random.Random(seed)
    next_id = 1
    conversations: list[list[int]] = []

    def fresh(count: int) -> list[int]:
        nonlocal next_id
        ids = list(range(next_id, next_id + count))
        next_id += count
        return ids

    for i in range(requests):
        timestamp = 3000 * (i // 8)  # the released trace's arrivals come in 3 s ticks
        if conversations and rng.random() < 0.55:
            c = rng.randrange(len(conversations))
            ids = conversations[c] = conversations[c][:-1] + fresh(rng.randint(1, 3))
        else:
            ids = [0, *fresh(rng.randint(1, 24))]
            if rng.random() < 0.6:
                conversations.append(ids)
        length = TRACE_BLOCK_TOKENS * (len(ids) - 1) + rng.randint(1, TRACE_BLOCK_TOKENS)
        yield json.dumps({"timestamp": timestamp, "input_length": length,
                          "output_length": rng.randint(1, 600), "hash_ids": ids})
