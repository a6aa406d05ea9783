"""The Mooncake FAST'25 trace workload (picker_bench.mooncake): the format's checks, what a
trace turns into, and the shipped sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picker_bench.mooncake import (
    SAMPLE_TRACE,
    parse_record,
    read_trace,
    synthetic_trace,
    trace_workload,
)
from picker_bench.workload import oracle_hit_rate
from picker_sim.engine import prompt_tokens

# The README's own sample (kvcache-ai/Mooncake FAST25-release/README.md).
README_LINE = ('{"timestamp": 27482, "input_length": 6955, "output_length": 52, '
               '"hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}')


def test_the_readme_sample_parses() -> None:
    record = parse_record(README_LINE, "t:1")
    assert record.timestamp_ms == 27482 and record.input_length == 6955
    assert record.output_length == 52 and len(record.hash_ids) == 14


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timestamp": -1}, "'timestamp' must be a number"),
        ({"input_length": "6955"}, "'input_length' must be an integer >= 1"),
        ({"output_length": True}, "'output_length' must be an integer >= 0"),
        ({"hash_ids": [1, "2"]}, "'hash_ids' must be a list of block ids"),
        ({"hash_ids": [1, 2]}, "'hash_ids' has 2 ids; 6955 input tokens are 14 blocks"),
    ],
)
def test_bad_lines_name_the_line_and_field(change: dict[str, object], message: str) -> None:
    line = json.dumps({**json.loads(README_LINE), **change})
    with pytest.raises(ValueError, match=f"trace.jsonl:7: {message}"):
        parse_record(line, "trace.jsonl:7")


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no trace records"):
        read_trace(path)


def test_shared_hash_ids_become_shared_prompt_prefixes_at_scale() -> None:
    lines = [
        '{"timestamp": 0, "input_length": 1024, "output_length": 512, "hash_ids": [0, 1]}',
        '{"timestamp": 3000, "input_length": 1280, "output_length": 1, "hash_ids": [0, 1, 2]}',
        '{"timestamp": 6000, "input_length": 100, "output_length": 9, "hash_ids": [7]}',
    ]
    records = [parse_record(line, f"t:{i}") for i, line in enumerate(lines)]
    workload = trace_workload(records, rate=1.0, tokens_per_block=16)
    first, second, third = (prompt_tokens(body) for body in workload.bodies)
    assert len(first) == 1 + 32 and len(second) == 1 + 32 + 8  # "user" + 16 per block
    assert second[:33] == first  # blocks 0 and 1 are the same words
    assert len(third) == 1 + 3  # 100 of 512 tokens: 3 of 16 words
    assert [b["max_tokens"] for b in workload.bodies] == [16, 1, 1]
    assert workload.arrivals == [0.0, 1.5, 3.0]  # 3 requests in 6 s, rescaled to 1/s
    assert workload.keys == [("h0-1", 0), ("h0-1", 1), ("h7", 0)]


def test_the_shipped_sample_is_the_synthetic_generator_output() -> None:
    """Made up by `synthetic_trace`, not taken from the released trace."""
    assert SAMPLE_TRACE.read_text().splitlines() == list(synthetic_trace())
    records = read_trace(SAMPLE_TRACE)
    workload = trace_workload(records, rate=20.0)
    assert len(workload.bodies) == 240
    assert 0.4 < oracle_hit_rate(workload, 16) < 0.7
    assert read_trace(SAMPLE_TRACE, limit=10) == records[:10]
