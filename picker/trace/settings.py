"""`trace:` in the configuration: record one line per request for replays (picker.trace)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from picker.strict import StrictModel

__all__ = ["TraceSettings"]


class TraceSettings(StrictModel):
    """Where and how much to record. The files are bounded: `path` grows to `max_bytes`, then
    becomes `path.1` (the older ones `path.2` ... up to `backups`, the oldest dropped)."""

    path: Path
    sample_rate: float = Field(default=1.0, gt=0, le=1,
                               description="Share of requests recorded, chosen at random")
    max_bytes: int = Field(default=100_000_000, ge=4096, description="Per file")
    backups: int = Field(default=1, ge=0, le=100, description="Rotated files kept")
    block_tokens: int = Field(default=16, ge=1, le=4096,
                              description="Prompt tokens per hashed block")
