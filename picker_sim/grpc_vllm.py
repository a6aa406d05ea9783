"""The simulated engine's gRPC face as vLLM's: `llm-picker sim --grpc --runtime vllm`.

Serves `vllm.grpc.engine.VllmEngine` as smg-grpc-proto 0.4.28 declares it (vllm_engine.proto
:10-49) over the same engine model as SGLang's face (picker_sim.grpc_server: running slots,
block cache, latency, vocabulary, KV events); only the messages differ. What each one says
follows the servicer SMG ships for vLLM (smg_grpc_servicer vllm/servicer.py):
- Generate: streamed, one GenerateStreamChunk per token whose counts are its own (deltas:
  `_chunk_response`), then a GenerateComplete repeating the last delta (`_complete_response`:
  "completion has last delta; Rust accumulates"); unstreamed, the GenerateComplete alone with
  every id. No request_id in the answers (vllm_engine.proto:285-290).
- Abort: the ids listed (no reason, `Abort`).
- GetServerInfo: `server_type` "vllm-grpc" and the scheduler's window (`max_num_seqs`).
No PD roles: vLLM's gRPC pairs (kv_transfer_params) are not simulated.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from smg_grpc_proto.generated import vllm_engine_pb2 as pb

from picker_sim.grpc_server import SglangSchedulerSim

__all__ = ["SERVICE", "VllmEngineSim"]

SERVICE = "vllm.grpc.engine.VllmEngine"


class VllmEngineSim(SglangSchedulerSim):
    service = SERVICE
    pb = pb
    _max_tokens_field = "max_tokens"

    def _max_tokens(self, params: Any) -> int | None:
        return params.max_tokens if params.HasField("max_tokens") else None

    def _chunk(self, request: Any, output: list[int], counts: dict[str, int]) -> Any:
        return pb.GenerateResponse(chunk=pb.GenerateStreamChunk(
            token_ids=output[-1:], completion_tokens=1, **counts))

    def _complete(self, request: Any, output: list[int], finish: str,
                  counts: dict[str, int]) -> Any:
        ids = output[-1:] if request.stream else output
        return pb.GenerateResponse(complete=pb.GenerateComplete(
            output_ids=ids, finish_reason=finish, completion_tokens=len(ids), **counts))

    def _aggregate(self, response: Any, load: Any) -> None:
        """vLLM's answer has the ranks' loads and no aggregate (vllm_engine.proto:526-538)."""

    async def Abort(self, request: Any, _: grpc.aio.ServicerContext) -> Any:
        for request_id in request.request_ids:
            self._abort(request_id, "no reason: vLLM's Abort has none")
        return pb.AbortResponse()

    async def GetServerInfo(self, _: Any, __: grpc.aio.ServicerContext) -> Any:
        """The fields a gateway reads of a vLLM worker (vllm_engine.proto:411-468)."""
        config, engine = self._config, self.engine
        return pb.GetServerInfoResponse(
            active_requests=engine.running + engine.waiting, is_paused=False,
            uptime_seconds=time.time() - self._started, server_type="vllm-grpc",
            data_parallel_size=1, block_size=config.block_tokens,
            max_num_seqs=config.max_concurrency)
