"""One request of a trace: what `trace:` recording writes and what a replay reads.

The line is a superset of the Mooncake FAST'25 trace format (kvcache-ai/Mooncake,
FAST25-release/README.md:1-13): `timestamp` (ms since the trace's start), `input_length` and
`output_length` (tokens) and `hash_ids`, the prompt's chained block hashes, so that a released
Mooncake trace is a valid trace here and a recorded one reads like it. Mooncake's blocks are
512 tokens (`block_size` defaults to that); a recorded trace says its own. What the picker
adds is optional: the request's model, API and session (a salted hash), what it asked for
(`max_tokens`), what was observed (TTFT, latency, the engine's cached tokens, the outcome)
and what was decided and predicted (worker, policy, predicted hit and TTFT).

No field holds prompt text: `hash_ids` are keyed hashes (picker.trace.hashing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

__all__ = ["json_object_line", "MOONCAKE_BLOCK_TOKENS", "TraceLine", "parse_line"]

# kvcache-ai/Mooncake FAST25-release/README.md: one hash id per 512-token block.
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceLine:
    timestamp: float  # ms since the trace's start
    input_length: int  # prompt tokens
    output_length: int  # generated tokens
    hash_ids: tuple[int, ...]  # chained hashes of the prompt's blocks, in order
    block_size: int = MOONCAKE_BLOCK_TOKENS  # prompt tokens per hash id
    model: str | None = None
    api: str | None = None  # the request path, e.g. /v1/chat/completions
    session: str | None = None  # salted hash of the session key
    max_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    outcome: str | None = None
    worker: str | None = None
    policy: str | None = None
    predicted_hit: float | None = None  # the winner's predicted prefix match, 0..1
    predicted_ttft_ms: float | None = None

    def to_json(self) -> str:
        """One line, unknown fields left out (a Mooncake-shaped line stays one). Fields are
        read directly: dataclasses.asdict deep-copies every hash id (measured: 80% of a
        recorded request's cost)."""
        data = {name: value for name in _FIELDS if (value := getattr(self, name)) is not None}
        return json.dumps(data, separators=(",", ":"))


_FIELDS = tuple(f.name for f in fields(TraceLine))
_INTS = ("input_length", "output_length", "block_size", "max_tokens", "cached_tokens")
_FLOATS = ("ttft_ms", "latency_ms", "predicted_hit", "predicted_ttft_ms")
_TEXTS = ("model", "api", "session", "outcome", "worker", "policy")
_MINIMUM = {"input_length": 1, "block_size": 1, "max_tokens": 1}


def json_object_line(text: str, where: str, what: str = "a trace line") -> dict[str, Any]:
    """One line of a JSON-lines file as an object; an error names `where` (file:line). Every
    JSONL reader of traces (this project's, Mooncake's, OpenAI-style requests) starts here."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not JSON ({error.msg})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {what} must be a JSON object")
    return data


def parse_line(text: str, where: str) -> TraceLine:
    """A line of a trace; an error names `where` (file:line) and the field."""
    data = json_object_line(text, where)
    unknown = set(data) - set(TraceLine.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    fields: dict[str, Any] = {}
    timestamp = data.get("timestamp")
    if not _number(timestamp) or timestamp < 0:
        raise ValueError(f"{where}: 'timestamp' must be a number of ms >= 0, not {timestamp!r}")
    fields["timestamp"] = float(timestamp)
    for name in _INTS:
        value = data.get(name)
        if value is None and name not in ("input_length", "output_length"):
            continue
        if not _integer(value) or value < _MINIMUM.get(name, 0):
            raise ValueError(f"{where}: '{name}' must be an integer >= "
                             f"{_MINIMUM.get(name, 0)}, not {value!r}")
        fields[name] = value
    for name in _FLOATS:
        value = data.get(name)
        if value is not None:
            if not _number(value) or value < 0:
                raise ValueError(f"{where}: '{name}' must be a number >= 0, not {value!r}")
            fields[name] = float(value)
    for name in _TEXTS:
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{name}' must be a string, not {value!r}")
            fields[name] = value
    ids = data.get("hash_ids")
    if not isinstance(ids, list) or not all(_integer(i) for i in ids):
        raise ValueError(f"{where}: 'hash_ids' must be a list of integers")
    fields["hash_ids"] = tuple(ids)
    return TraceLine(**fields)


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
