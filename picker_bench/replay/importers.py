"""`llm-picker trace import`: public trace formats turned into trace lines (picker.trace.line).

- `mooncake`: the FAST'25 release (kvcache-ai/Mooncake, FAST25-release/README.md:1-13 and
  traces/*.jsonl), read and checked by picker_bench.mooncake; its lines are trace lines
  already, with 512-token blocks.
- `openai`: JSONL of OpenAI-style requests, one per line: a chat (`messages`) or completions
  (`prompt`) body, optionally wrapped as `{"timestamp": ms, "body": {...}}` (absent: one
  request per second). Prompts are hashed as a recording hashes them (picker.trace.hashing,
  a fresh key: the text does not leave this command), with the simulators' tokenizer
  (whitespace words) for lengths; `max_tokens` is the output length.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from picker.trace.hashing import TraceHasher
from picker.trace.line import MOONCAKE_BLOCK_TOKENS, TraceLine, json_object_line
from picker_bench.mooncake import parse_record
from picker_sim.engine import prompt_tokens, token_ids

__all__ = ["FORMATS", "import_trace"]

FORMATS = ("mooncake", "openai")
# Tokens per hashed block of an imported OpenAI trace, as a recording's default.
_OPENAI_BLOCK_TOKENS = 16
_DEFAULT_OUTPUT = 16  # max_tokens absent: the simulators' default


def import_trace(path: Path, kind: str) -> Iterator[TraceLine]:
    """The file's requests as trace lines, in file order; ValueError names line and field."""
    if kind not in FORMATS:
        raise ValueError(f"unknown trace format {kind!r} (known: {', '.join(FORMATS)})")
    hasher = TraceHasher(_OPENAI_BLOCK_TOKENS)
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            if kind == "mooncake":
                record = parse_record(text, where)
                yield TraceLine(record.timestamp_ms, record.input_length, record.output_length,
                                record.hash_ids, MOONCAKE_BLOCK_TOKENS)
            else:
                yield _openai_line(text, where, number, hasher)


def _openai_line(text: str, where: str, number: int, hasher: TraceHasher) -> TraceLine:
    data = json_object_line(text, where, "a request")
    timestamp: Any = (number - 1) * 1000.0
    body: Any = data
    if "body" in data:
        body, timestamp = data["body"], data.get("timestamp", timestamp)
        if not isinstance(body, dict):
            raise ValueError(f"{where}: 'body' must be a JSON object")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
                or timestamp < 0:
            raise ValueError(f"{where}: 'timestamp' must be a number of ms >= 0")
    if not isinstance(body.get("messages"), list) and not isinstance(body.get("prompt"), str):
        raise ValueError(f"{where}: a request needs 'messages' (a list) or 'prompt' (a string)")
    tokens = prompt_tokens(body)
    if not tokens:
        raise ValueError(f"{where}: the prompt is empty")
    output = _output_tokens(body, where)
    api = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    model = body.get("model")
    return TraceLine(float(timestamp), len(tokens), output,
                     tuple(hasher.blocks(token_ids(tokens), "")), hasher.block_tokens,
                     model=model if isinstance(model, str) else None, api=api,
                     max_tokens=output)


def _output_tokens(body: Mapping[str, Any], where: str) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: '{key}' must be an integer >= 1, not {value!r}")
        return value
    return _DEFAULT_OUTPUT
