"""Settings of the KV-event index: plain configuration, importable without pyzmq or msgspec."""

from __future__ import annotations

from pydantic import Field

from picker.strict import StrictModel

__all__ = ["KvEventSettings"]


class KvEventSettings(StrictModel):

    # A pick counts as held by its worker for this long, until the engine's own BlockStored
    # arrives (prefill plus publishing takes tens of ms): requests sharing a new prefix that
    # arrive together then still meet on one engine. 0 trusts events alone.
    pending_secs: float = Field(default=2.0, ge=0)
    # Memory bound when removals are missed: the oldest blocks of a worker go first.
    max_blocks_per_worker: int = Field(default=262_144, ge=1)
    replay_timeout_secs: float = Field(default=2.0, gt=0)
    # An engine whose sequence starts over is cleared and replayed at most once per this long:
    # a flapping or misbehaving publisher cannot make the index churn. Messages it sends
    # meanwhile are dropped; the replay after the pause recovers them.
    restart_min_interval_secs: float = Field(default=1.0, ge=0)
    # libzmq reconnects with exponential backoff from 100 ms up to this.
    reconnect_max_secs: float = Field(default=5.0, gt=0)
