"""The simulated engine's gRPC face: SGLang's scheduler service, token ids in and out.

`llm-picker sim --grpc` serves `sglang.grpc.scheduler.SglangScheduler` as smg-grpc-proto 0.4.28
declares it (sglang_scheduler.proto:11-63; the `grpc-engines` extra), or with `--runtime vllm`
vLLM's service (picker_sim.grpc_vllm, a subclass that changes only the messages), over the
engine the HTTP face uses (picker_sim.engine): the same running slots, block cache and latency
model, with the prompt's token ids as its tokens. So a gateway that tokenizes (SMG, the picker's
gRPC routers) sees cache hits, queueing and load as it would on an SGLang engine started with
`--grpc-mode` (or a vLLM one behind smg-grpc-servicer).

What each RPC answers, and the engine-side code it follows (smg_grpc_servicer 0.14.1,
sglang/servicer.py, the servicer SGLang 0.5.23's grpc_server.py delegates to):
- Generate: one GenerateStreamChunk per token when `stream` is set (cumulative counts,
  proto :231-252), then a GenerateComplete; without `stream`, the GenerateComplete alone.
  As the servicer builds it from the last output (:293-295, :1305-1307), a streamed
  GenerateComplete carries that last chunk's ids, not the whole output. The sim generates no
  EOS: every answer ends by its length, finish_reason "length" (:1276-1277). Errors are gRPC
  statuses, never a message (proto :223).
- Abort: marks the request finished; its stream ends without a GenerateComplete, as the
  request manager stops forwarding outputs (request_manager.py:584-592).
- HealthCheck, GetModelInfo, GetServerInfo, GetLoads, GetTokenizer: see each method.
- SubscribeKvEvents (with `--kv-events`): the cache's events, picker_sim.kv_stream.
- PD: a prefill sim computes the prompt and one token, then holds the request's bootstrap room,
  and serves its bootstrap port over HTTP (picker_sim.pd's routes, as the HTTP sims do); a
  decode sim refuses a request without DisaggregatedParams (proto :114-118), waits for the
  prefill named there to hold the room, and decodes without paying prefill. Each logs the
  DisaggregatedParams it got (`PD <role> <request id>: room R at host:port`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvicorn
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb
from starlette.applications import Starlette
from starlette.responses import Response

from picker_sim.engine import SimConfig, SimEngine
from picker_sim.kv_publisher import CacheEvents
from picker_sim.kv_stream import KvEventStream
from picker_sim.kv_stream import handler as kv_stream_handler
from picker_sim.pd import PdPeer
from picker_sim.token_vocab import SimVocabulary

__all__ = ["SERVICE", "SglangSchedulerSim", "run_grpc_sim"]

SERVICE = "sglang.grpc.scheduler.SglangScheduler"
# What the HTTP sim's /tokenize reports as max_model_len.
MAX_CONTEXT = 32768
# GetTokenizer's chunk size (smg_grpc_servicer tokenizer_bundle.py:22, "aligned with Rust
# grpc_client limits").
_CHUNK_BYTES = 64 * 1024
# GetLoadsRequest.include's sections (sglang_scheduler.proto:576).
_LOAD_SECTIONS = frozenset({"core", "memory", "spec", "lora", "disagg", "queues", "all"})
# An HTTP status from picker_sim.pd, as the gRPC status the servicer would end a stream with.
_PD_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


class SglangSchedulerSim:
    """The service's methods; registered by name (`handlers`), so an RPC the sim does not
    serve (Embed, LoRA, profiling; KV events unless `kv_events`) answers UNIMPLEMENTED.
    `service` and `pb` name the service and its generated messages; the `_chunk`,
    `_complete`, `_max_tokens`, `_loads` hooks, Abort and GetServerInfo are what another
    engine's service (picker_sim.grpc_vllm) writes differently."""

    service = SERVICE
    pb: Any = pb

    def __init__(self, config: SimConfig, vocabulary: SimVocabulary,
                 pd: PdPeer | None = None, bootstrap_port: int | None = None,
                 kv_events: bool = False) -> None:
        self.engine = SimEngine(config)
        self._kv_events: KvEventStream | None = None
        if kv_events:
            self._kv_events = KvEventStream()
            self.engine.events = CacheEvents(self._kv_events, config.block_tokens,
                                             lambda tokens: [int(token) for token in tokens])
        self._config = config
        self._vocabulary = vocabulary
        self._pd = pd
        self._bootstrap_port = bootstrap_port
        self._aborted: dict[str, asyncio.Event] = {}
        self._started = time.time()
        self._keys = itertools.count()

    def handlers(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        methods: dict[str, grpc.RpcMethodHandler] = {
            "Generate": grpc.unary_stream_rpc_method_handler(
                self.Generate, request_deserializer=self.pb.GenerateRequest.FromString,
                response_serializer=self.pb.GenerateResponse.SerializeToString),
            "GetTokenizer": grpc.unary_stream_rpc_method_handler(
                self.GetTokenizer, request_deserializer=common_pb2.GetTokenizerRequest.FromString,
                response_serializer=common_pb2.GetTokenizerChunk.SerializeToString),
        }
        for name, method in (("HealthCheck", self.HealthCheck), ("Abort", self.Abort),
                             ("GetModelInfo", self.GetModelInfo),
                             ("GetServerInfo", self.GetServerInfo), ("GetLoads", self.GetLoads)):
            request, response = (getattr(self.pb, name + kind) for kind in ("Request", "Response"))
            methods[name] = unary(method, request_deserializer=request.FromString,
                                  response_serializer=response.SerializeToString)
        if self._kv_events is not None:
            methods["SubscribeKvEvents"] = kv_stream_handler(self._kv_events)
        return grpc.method_handlers_generic_handler(self.service, methods)

    # -- generation -----------------------------------------------------------------------------

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext,
                       ) -> AsyncIterator[Any]:
        engine, vocabulary = self.engine, self._vocabulary
        ids = list(request.tokenized.input_ids)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "tokenized.input_ids is empty: the engine takes token ids")
        params = request.sampling_params
        limit = self._max_tokens(params)
        n_out = self._config.max_tokens_default if limit is None else limit
        if n_out < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"sampling_params.{self._max_tokens_field} must be at least 1")
        if engine.should_fail():
            engine.requests_total += 1
            engine.failed += 1
            await context.abort(grpc.StatusCode.INTERNAL, "simulated engine failure")
        if self._pd is not None:
            # One line per PD request, so a test can tell both engines of a pair met in
            # one room.
            params = request.disaggregated_params
            print(f"PD {self._pd.role} {request.request_id!r}: room {params.bootstrap_room} "
                  f"at {params.bootstrap_host}:{params.bootstrap_port}", flush=True)
        prefilled = await self._fetch_prefill(request, context)
        if self._pd is not None and self._pd.role == "prefill":
            n_out = 1  # a prefill engine computes the prompt's KV and one token
        ends = vocabulary.whole and n_out >= len(vocabulary.output_ids)
        if vocabulary.whole:
            n_out = min(n_out, len(vocabulary.output_ids))
        key = request.request_id or f"sim-{next(self._keys)}"
        aborted = self._aborted[key] = asyncio.Event()
        output: list[int] = []
        try:
            async with engine.admitted([str(i) for i in ids], prefilled) as run:
                counts = {"prompt_tokens": run.prompt_tokens, "cached_tokens": run.cached_tokens}
                await run.first_token()
                for index in range(n_out):
                    if index:
                        await run.next_token()
                    if aborted.is_set():
                        engine.cancelled += 1
                        return
                    output.append(vocabulary.token(index))
                    if request.stream:
                        yield self._chunk(request, output, counts)
                run.finish()
        finally:
            if self._aborted.get(key) is aborted:
                del self._aborted[key]
        if self._pd is not None and self._pd.role == "prefill":
            self._pd.prefilled(_bootstrap(request), {}, by_length=True)
        yield self._complete(request, output, "stop" if ends else "length", counts)

    # The messages, SGLang's: counts cumulative (sglang_scheduler.proto:231-252).
    _max_tokens_field = "max_new_tokens"

    def _max_tokens(self, params: Any) -> int | None:
        return params.max_new_tokens if params.HasField("max_new_tokens") else None

    def _chunk(self, request: Any, output: list[int], counts: dict[str, int]) -> Any:
        return pb.GenerateResponse(request_id=request.request_id, chunk=pb.GenerateStreamChunk(
            token_ids=output[-1:], completion_tokens=len(output), **counts))

    def _complete(self, request: Any, output: list[int], finish: str,
                  counts: dict[str, int]) -> Any:
        return pb.GenerateResponse(request_id=request.request_id, complete=pb.GenerateComplete(
            output_ids=output[-1:] if request.stream else output, finish_reason=finish,
            completion_tokens=len(output), **counts))

    async def _fetch_prefill(self, request: Any,
                             context: grpc.aio.ServicerContext) -> bool:
        """On a decode sim: wait for the prefill the request names (True once its KV is
        there); elsewhere False."""
        if self._pd is None or self._pd.role != "decode":
            return False
        if not request.HasField("disaggregated_params") \
                or not request.disaggregated_params.bootstrap_host:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a decode worker needs disaggregated_params (bootstrap_host, "
                                "bootstrap_port, bootstrap_room)")
        outcome = await self._pd.fetch(_bootstrap(request), "/generate", {})
        if isinstance(outcome, Response):
            await context.abort(_PD_STATUS.get(outcome.status_code, grpc.StatusCode.INTERNAL),
                                bytes(outcome.body).decode(errors="replace"))
        return outcome is True

    async def Abort(self, request: Any, _: grpc.aio.ServicerContext) -> Any:
        found = self._abort(request.request_id, request.reason)
        # The servicer's message (sglang/servicer.py:484-487).
        return pb.AbortResponse(success=found, message=f"Request {request.request_id} "
                                                       f"{'aborted' if found else 'not found'}")

    def _abort(self, request_id: str, reason: str) -> bool:
        """Stop the request's generation; whether it was running. One line per Abort, so a
        test can tell that a gateway sent it (an aborted stream whose client already reset it
        is "not found": its generation had stopped)."""
        event = self._aborted.get(request_id)
        if event is not None:
            event.set()
        found = "aborted" if event is not None else "not found"
        print(f"Abort {request_id!r} ({reason}): {found}", flush=True)
        return event is not None

    # -- engine facts -----------------------------------------------------------------------------

    async def HealthCheck(self, _: Any, __: grpc.aio.ServicerContext) -> Any:
        """The servicer generates one token to answer (sglang/servicer.py:356-470); the sim's
        engine is always able to."""
        return self.pb.HealthCheckResponse(healthy=True, message="")

    async def GetModelInfo(self, _: Any, __: grpc.aio.ServicerContext) -> Any:
        """Fields as the servicer fills them from its server args and model config
        (sglang/servicer.py:525-557); vLLM's message has these under the same names."""
        config, vocabulary = self._config, self._vocabulary
        return self.pb.GetModelInfoResponse(
            model_path=config.model, served_model_name=config.model,
            tokenizer_path=str(vocabulary.directory or ""), is_generation=True,
            max_context_length=MAX_CONTEXT, max_req_input_len=MAX_CONTEXT - 1,
            vocab_size=min(vocabulary.vocab_size, 2**31 - 1),
            eos_token_ids=vocabulary.eos_token_ids, bos_token_id=vocabulary.bos_token_id,
            model_type="sim", architectures=["SimForCausalLM"])

    async def GetServerInfo(self, _: Any, __: grpc.aio.ServicerContext) -> Any:
        """SGLang's server args under their names (a Struct, sglang/servicer.py:559-652):
        what a gateway reads of a worker's role, ranks and window."""
        config, engine = self._config, self.engine
        args = Struct()
        args.update({
            "model_path": config.model, "served_model_name": config.model,
            "tokenizer_path": str(self._vocabulary.directory or ""), "dp_size": 1,
            "max_running_requests": config.max_concurrency, "page_size": config.block_tokens,
            "disaggregation_mode": "null" if config.role == "regular" else config.role,
        })
        if self._bootstrap_port is not None:
            args.update({"disaggregation_bootstrap_port": self._bootstrap_port})
        started = Timestamp()
        started.FromSeconds(int(self._started))
        return pb.GetServerInfoResponse(
            server_args=args, scheduler_info=Struct(),
            active_requests=engine.running + engine.waiting, is_paused=False,
            uptime_seconds=time.time() - self._started, sglang_version="llm-picker-sim",
            server_type="grpc", start_time=started,
            max_total_num_tokens=config.cache_blocks * config.block_tokens)

    async def GetLoads(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One rank's core section (sglang_scheduler.proto:597-611): what the HTTP sim's
        metrics say, under SGLang's names."""
        unknown = sorted(set(request.include) - _LOAD_SECTIONS)
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"include: unknown sections {unknown[:5]} (known: "
                                f"{', '.join(sorted(_LOAD_SECTIONS))})")
        if request.HasField("dp_rank") and request.dp_rank != 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"dp_rank {request.dp_rank}: the sim has one rank, 0")
        engine, config = self.engine, self._config
        running, waiting = engine.requests_running(), engine.requests_waiting()
        usage = engine.kv_cache_usage()
        hit_rate = engine.cached_tokens_total / max(1, engine.prompt_tokens_total)
        load = self.pb.SchedulerLoad(
            dp_rank=0, num_running_reqs=running, num_waiting_reqs=waiting,
            num_total_reqs=running + waiting,
            num_used_tokens=len(engine.cache) * config.block_tokens,
            max_total_num_tokens=config.cache_blocks * config.block_tokens, token_usage=usage,
            cache_hit_rate=hit_rate, utilization=running / config.max_concurrency,
            max_running_requests=config.max_concurrency)
        response = self.pb.GetLoadsResponse(
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            version="llm-picker-sim", dp_rank_count=1, loads=[load])
        self._aggregate(response, load)
        return response

    def _aggregate(self, response: Any, load: Any) -> None:
        """SGLang's answer sums the ranks (sglang_scheduler.proto's AggregateMetrics)."""
        response.aggregate.CopyFrom(pb.AggregateMetrics(
            total_running_reqs=load.num_running_reqs, total_waiting_reqs=load.num_waiting_reqs,
            total_reqs=load.num_total_reqs, avg_token_usage=load.token_usage,
            avg_utilization=load.utilization))

    async def GetTokenizer(self, _: Any, context: grpc.aio.ServicerContext,
                           ) -> AsyncIterator[Any]:
        """The tokenizer directory as one zip in 64 KiB chunks, its SHA-256 (hex) on the last
        (common.proto:10-13; the servicer's answer without a directory, servicer.py:860-864)."""
        data = self._vocabulary.bundle
        if data is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "Tokenizer path is not configured on this server.")
            return
        digest = hashlib.sha256(data).hexdigest()
        for start in range(0, len(data), _CHUNK_BYTES):
            last = start + _CHUNK_BYTES >= len(data)
            yield common_pb2.GetTokenizerChunk(data=data[start:start + _CHUNK_BYTES],
                                               sha256=digest if last else "")


def _bootstrap(request: Any) -> dict[str, Any]:
    """DisaggregatedParams as picker_sim.pd reads them from an SGLang HTTP body."""
    params = request.disaggregated_params
    return {"bootstrap_host": params.bootstrap_host, "bootstrap_port": params.bootstrap_port,
            "bootstrap_room": params.bootstrap_room}


async def serve_grpc(config: SimConfig, vocabulary: SimVocabulary, host: str, port: int,
                     bootstrap_port: int | None = None, kv_events: bool = False,
                     runtime: str = "sglang") -> None:
    """Serve until cancelled; a prefill sim also serves its bootstrap port. `runtime`: whose
    service, "sglang" or "vllm" (no PD roles: vLLM's gRPC pairs are not simulated)."""
    service: type[SglangSchedulerSim] = SglangSchedulerSim
    if runtime == "vllm":
        from picker_sim.grpc_vllm import VllmEngineSim  # it subclasses this module's sim

        service = VllmEngineSim
    pd = None
    if config.role != "regular":
        assert runtime == "sglang", "PD roles are simulated over SGLang's service only"
        pd = PdPeer(config.role, "sglang", config.worker_id, host, bootstrap_port or port,
                    config.pd_wait_ms / 1000)
    sim = service(config, vocabulary, pd, bootstrap_port if config.role == "prefill" else None,
                  kv_events)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((sim.handlers(),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    jobs = [server.wait_for_termination()]
    if pd is not None and pd.role == "prefill":
        assert bootstrap_port is not None, "a prefill sim needs a bootstrap port"
        bootstrap = uvicorn.Server(uvicorn.Config(
            Starlette(routes=pd.routes()), host=host, port=bootstrap_port,
            log_level="warning", access_log=False, lifespan="off", ws="none"))
        jobs.append(bootstrap.serve())
    print(f"llm-picker sim {config.worker_id!r} serving model {config.model!r} over gRPC "
          f"({sim.service}) on {host}:{port}", flush=True)
    try:
        await asyncio.gather(*jobs)
    finally:
        await server.stop(grace=None)


def run_grpc_sim(config: SimConfig, vocabulary: SimVocabulary, host: str, port: int,
                 bootstrap_port: int | None = None, kv_events: bool = False,
                 runtime: str = "sglang") -> None:
    asyncio.run(serve_grpc(config, vocabulary, host, port, bootstrap_port, kv_events, runtime))
