"""A gRPC engine's GetLoads answer as the EngineLoad the HTTP scraper fills from /metrics.

Pure, as picker.fleet.engine_scrape.parse_engine_load is: the poller (LoadMonitor) does the
call. SGLang's GetLoads reports per data-parallel rank (SchedulerLoad,
sglang_scheduler.proto:597-611; vLLM's the same fields, vllm_engine.proto:542-554): a worker
that is one rank reads its own; a worker that is the whole engine sums the counts over ranks
and averages the KV usage, a fraction (as parse_engine_load does with rank series).
"""

from __future__ import annotations

import math

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.fleet.engine_load import EngineLoad

__all__ = ["load_from_loads"]


def load_from_loads(answer: pb.GetLoadsResponse, now: float,
                    rank: int | None = None) -> EngineLoad:
    """Never raises: an answer without this worker's rank yields an EngineLoad with nothing
    known; a non-finite usage is left unknown."""
    loads = [load for load in answer.loads if rank is None or load.dp_rank == rank]
    if not loads:
        return EngineLoad(scraped_at=now)
    usage = [load.token_usage for load in loads if math.isfinite(load.token_usage)]
    return EngineLoad(
        scraped_at=now,
        running=float(sum(load.num_running_reqs for load in loads)),
        waiting=float(sum(load.num_waiting_reqs for load in loads)),
        kv_usage=sum(usage) / len(usage) if usage else None,
    )
