"""The simulated engine's HTTP face: OpenAI-compatible endpoints plus vLLM-named metrics."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, NamedTuple, TypeVar

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from picker_sim import anthropic, scoring
from picker_sim.engine import SimConfig, SimEngine, SimRun, prompt_tokens, token_ids
from picker_sim.lora import LoraRefusal, SimLoras
from picker_sim.pd import PdPeer

__all__ = ["WORKER_HEADER", "create_app", "run_sim"]

_T = TypeVar("_T")

WORKER_HEADER = "x-picker-sim-worker"


class _Control(NamedTuple):
    attribute: str  # on SimEngine
    types: tuple[type, ...]  # accepted JSON types (bool never, though it is an int)
    allowed: str  # the rule, for the error message
    ok: Callable[[float], bool]


_INT, _NUMBER = (int,), (int, float)
_CONTROLS: dict[str, _Control] = {
    "health_status": _Control("health_status", _INT, "an integer in 100..599",
                              lambda v: 100 <= v <= 599),
    "health_delay_ms": _Control("health_delay_ms", _NUMBER, "a number >= 0",
                                lambda v: 0 <= v < math.inf),
    "extra_waiting": _Control("extra_waiting", _INT, "an integer >= 0", lambda v: v >= 0),
    "kv_usage": _Control("kv_usage_override", _NUMBER, "a number in 0..1",
                         lambda v: 0 <= v <= 1),
    "prefill_stops_early": _Control("prefill_stops_early", _INT, "0 or 1",
                                    lambda v: v in (0, 1)),
}


def _bad_control(key: str, value: object) -> str | None:
    """Why `key: value` is not a control the sim takes, or None when it is."""
    control = _CONTROLS.get(key)
    if control is None:
        return f"unknown control {key[:100]!r} (known: {', '.join(_CONTROLS)})"
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not isinstance(value, control.types) or not control.ok(value)):
        return f"control {key!r} must be {control.allowed}, got {str(value)[:50]!r}"
    return None


class _VllmMetrics(Collector):
    """Engine state under vLLM's metric names, read at scrape time."""

    def __init__(self, engine: SimEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine, model = self._engine, [self._engine.config.model]
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests running on the engine",
             engine.requests_running()),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled",
             engine.requests_waiting()),
            ("vllm:kv_cache_usage_perc", "KV-cache usage, 0..1", engine.kv_cache_usage()),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(model, value)
            yield gauge
        # vLLM's info gauge: the cache geometry as labels, value 1.
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the cache config",
                                 labels=["block_size", "num_gpu_blocks"])
        info.add_metric([str(engine.config.block_tokens), str(engine.config.cache_blocks)], 1)
        yield info
        if engine.loras is not None:
            yield _lora_info(engine.loras)
        for name, doc, count in (
            ("vllm:request_success", "Finished requests", engine.completed),
            ("vllm:prompt_tokens", "Prompt tokens received", engine.prompt_tokens_total),
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
             engine.prompt_tokens_total),
            ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache",
             engine.cached_tokens_total),
        ):
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(model, count)
            yield counter
        # Histograms with only the +Inf bucket: readers of sum and count (the picker) get
        # vLLM's names and numbers; nobody reads quantiles from a simulator.
        for name, doc, total, count in (
            ("vllm:time_to_first_token_seconds", "Time to first token",
             engine.ttft_secs_total, engine.ttft_count),
            ("vllm:inter_token_latency_seconds", "Time between output tokens",
             engine.itl_secs_total, engine.itl_count),
            ("vllm:request_prefill_time_seconds", "Time requests spent in prefill",
             engine.prefill_secs_total, engine.ttft_count),
            ("vllm:request_prefill_kv_computed_tokens", "Tokens computed in prefill",
             engine.prefill_tokens_total, engine.ttft_count),
        ):
            histogram = HistogramMetricFamily(name, doc, labels=["model_name"])
            histogram.add_metric(model, [("+Inf", count)], total)
            yield histogram


def _lora_info(loras: SimLoras) -> Metric:
    """vLLM's LoRA info gauge: one series per adapter combination, valued the time it was
    current (picker_sim.lora; vllm/v1/metrics/loggers.py:1103-1111, label order as there)."""
    gauge = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                              labels=["max_lora", "waiting_lora_adapters",
                                      "running_lora_adapters"])
    for labels, at in loras.info_series():
        gauge.add_metric(list(labels), at)
    return gauge


class _WorkerHeader:
    """Stamps every response, errors and 404s included, so routing is observable by clients."""

    def __init__(self, app: ASGIApp, worker_id: str) -> None:
        self._app = app
        self._header = (WORKER_HEADER.encode(), worker_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self._header]
            await send(message)

        await self._app(scope, receive, stamped)


async def _json_object(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object body, or the 400 an engine answers for anything else."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(400, "invalid JSON body", "invalid_request_error", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object", "invalid_request_error", "invalid")
    return body


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, _T]) -> _T | None:
    """`work`, cancelled if the client disconnects first (None then): an engine stops
    generating an answer nobody will read. vLLM's endpoints do so for non-streamed requests
    too (vllm/entrypoints/utils.py, `with_cancellation`: the handler races a task waiting for
    `http.disconnect`); a streamed one notices at its next chunk. The body has been read, so
    the next message the server receives is the disconnect."""
    generation = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((generation, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:  # the handler itself cancelled (server shutdown) ends both as well
        gone.cancel()
        generation.cancel()
    try:
        return await generation
    except asyncio.CancelledError:
        this = asyncio.current_task()
        if gone.done() and not gone.cancelled() and not (this and this.cancelling()):
            return None  # the client left first (and the handler itself is not being ended)
        raise


async def _answer_unless_disconnected(request: Request,
                                     answer: Coroutine[Any, Any, Response]) -> Response:
    """`answer` (a streamed one returns at once, and notices a disconnect at its next chunk),
    or 499 for a client that left while it was made."""
    done = await _unless_disconnected(request, answer)
    return _client_gone() if done is None else done


def _client_gone() -> Response:
    """nginx's "client closed request": nobody is left to read it."""
    return Response(status_code=499)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _vllm_error(refusal: LoraRefusal) -> JSONResponse:
    """vLLM's ErrorResponse: `code` is the HTTP status (vllm/entrypoints/serve/engine/
    protocol.py:79-87)."""
    return JSONResponse({"error": {"message": refusal.message, "type": refusal.error_type,
                                   "param": None, "code": refusal.status}},
                        status_code=refusal.status)


def _error(status: int, message: str, error_type: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "code": code}}, status_code=status
    )


def create_app(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> ASGIApp:
    """One engine per app, with its own metrics registry, so several sims can share a process.
    `port`: where the app is served, which a prefill sim tells its decode peers."""
    engine = SimEngine(config)
    pd = None if config.role == "regular" else PdPeer(
        config.role, config.pd_protocol, config.worker_id, host, port, config.pd_wait_ms / 1000)
    if config.kv_events_port is not None:
        from picker_sim.kv_publisher import CacheEvents, KvEventPublisher

        publisher = KvEventPublisher(host, config.kv_events_port, config.kv_replay_port,
                                     "array" if config.kv_encoding == "array" else "map")
        engine.events = CacheEvents(publisher, config.block_tokens)
    metrics = CollectorRegistry()
    metrics.register(_VllmMetrics(engine))
    ids = iter(range(1, 1 << 62))

    def unauthorised(request: Request) -> Response | None:
        if config.api_key is None:
            return None
        if request.headers.get("authorization") == f"Bearer {config.api_key}":
            return None
        return _error(401, "missing or wrong API key", "authentication_error", "invalid_api_key")

    async def accepted(request: Request) -> dict[str, Any] | Response:
        """The body of a request this engine serves, or the error it answers instead (in
        Anthropic's shape on Anthropic's paths, as vLLM answers there)."""
        shaped = request.url.path.startswith("/v1/messages")

        def refuse(status: int, message: str, error_type: str, code: str) -> Response:
            return (anthropic.anthropic_error(status, message, error_type) if shaped
                    else _error(status, message, error_type, code))

        if unauthorised(request) is not None:
            return refuse(401, "missing or wrong API key", "authentication_error",
                          "invalid_api_key")
        body = await _json_object(request)
        if isinstance(body, Response):
            return refuse(400, "the body must be a JSON object", "invalid_request_error",
                          "invalid_json") if shaped else body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return refuse(400, "model must be a non-empty string", "invalid_request_error",
                          "missing_model")
        adapters = () if engine.loras is None else engine.loras.registered
        if model != config.model and model not in adapters:
            return refuse(404, f"model {str(body.get('model'))[:100]!r} not served here",
                          "not_found_error", "model_not_found")
        if engine.should_fail():
            engine.requests_total += 1
            engine.failed += 1
            return refuse(500, "simulated engine failure",
                          "api_error" if shaped else "server_error", "sim_failure")
        return body

    async def messages(request: Request) -> Response:
        """Anthropic's /v1/messages and /v1/messages/count_tokens (picker_sim.anthropic)."""
        body = await accepted(request)
        if isinstance(body, Response):
            return body
        if request.url.path.endswith("/count_tokens"):
            return anthropic.count_tokens(body)
        reply_id = f"msg-{config.worker_id}-{next(ids)}"
        return await _answer_unless_disconnected(
            request, anthropic.messages(engine, body, reply_id, config.model))

    async def cross_encode(request: Request) -> Response:
        """Rerank and score, at every path vLLM serves them (picker_sim.scoring)."""
        body = await accepted(request)
        if isinstance(body, Response):
            return body
        kind = "rerank" if request.url.path.endswith("rerank") else "score"
        reply = scoring.rerank if kind == "rerank" else scoring.score
        return await _answer_unless_disconnected(
            request, reply(engine, body, f"{kind}-{config.worker_id}-{next(ids)}", config.model))

    async def generate(request: Request) -> Response:
        chat = request.url.path.endswith("/chat/completions")
        body = await accepted(request)
        if isinstance(body, Response):
            return body
        model = body["model"]
        adapter = None if model == config.model else model  # a LoRA adapter it serves
        try:
            n_out = engine.output_tokens(body)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_max_tokens")
        prompt = prompt_tokens(body)
        decode = pd is not None and pd.role == "decode"
        fetched = False  # the prompt's KV came from a prefill peer, not computed here
        if pd is not None and decode:
            outcome = await pd.fetch(body, request.url.path, request.headers)
            if isinstance(outcome, Response):
                return outcome
            fetched = outcome
        extra: dict[str, Any] = {}
        if pd is not None and pd.role == "prefill":
            n_out = 1  # a prefill engine computes the prompt's KV and one token
        usage: dict[str, Any] = {"prompt_tokens": len(prompt), "completion_tokens": n_out,
                 "total_tokens": len(prompt) + n_out}
        reply_id = f"{'chatcmpl' if chat else 'cmpl'}-{config.worker_id}-{next(ids)}"
        created = int(time.time())
        base = {"id": reply_id, "created": created, "model": model}

        if body.get("stream") is True and (pd is None or decode):
            return StreamingResponse(
                _stream(engine, prompt, chat, base, n_out, usage, fetched, adapter),
                media_type="text/event-stream",
            )
        done = await _unless_disconnected(
            request, engine.generated(prompt, n_out, prefilled=fetched, adapter=adapter))
        if done is None:
            return _client_gone()
        run = done
        usage["prompt_tokens_details"] = _cached(run)
        finish = "length"
        if pd is not None and pd.role == "prefill":
            by_length = not engine.prefill_stops_early
            extra = pd.prefilled(body, request.headers, by_length)
            finish = "length" if by_length else "stop"
        text = "".join(engine.token(i) for i in range(n_out))
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": finish}
            if chat else {"index": 0, "text": text, "finish_reason": finish}
        )
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**base, "object": obj, "choices": [choice], "usage": usage,
                             **extra})

    async def models(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        adapters = [] if engine.loras is None else engine.loras.model_cards()
        return JSONResponse({"object": "list", "data": [
            {"id": config.model, "object": "model", "created": 0, "owned_by": "llm-picker-sim",
             "root": config.model, "parent": None}, *adapters
        ]})

    async def load_lora_adapter(request: Request) -> Response:
        """vLLM's POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace}."""
        assert engine.loras is not None
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        engine.lora_load_calls += 1
        refusal = engine.loras.load(body.get("lora_name"), body.get("lora_path"),
                                    body.get("load_inplace", False))
        if refusal is not None:
            return _vllm_error(refusal)
        return Response(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def unload_lora_adapter(request: Request) -> Response:
        """vLLM's POST /v1/unload_lora_adapter {lora_name}."""
        assert engine.loras is not None
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        refusal = engine.loras.unload(body.get("lora_name"))
        if refusal is not None:
            return _vllm_error(refusal)
        return Response(f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")

    async def health(_: Request) -> Response:
        if engine.health_delay_ms:
            await asyncio.sleep(engine.health_delay_ms / 1000)
        return Response(status_code=engine.health_status)

    async def control(request: Request) -> Response:
        """Test knobs: {"health_status", "health_delay_ms", "extra_waiting", "kv_usage"}.

        All or nothing: one bad key (unknown, wrong type, out of range) changes no knob.
        """
        changes = await _json_object(request)
        if isinstance(changes, Response):
            return changes
        for key, value in changes.items():
            if (problem := _bad_control(key, value)) is not None:
                return _error(400, problem, "invalid_request_error", "invalid_control")
        for key, value in changes.items():
            setattr(engine, _CONTROLS[key].attribute, value)
        return JSONResponse({"ok": True})

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics), media_type="text/plain; version=0.0.4")

    async def tokenize(request: Request) -> Response:
        """vLLM's /tokenize: {model, prompt} or {model, messages, ...} -> {tokens, count, ...}."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid JSON body", "invalid_request_error", "invalid_json")
        if not isinstance(body, dict) or ("prompt" not in body and "messages" not in body):
            return _error(400, "need prompt or messages", "invalid_request_error", "invalid")
        tokens = token_ids(prompt_tokens(body))
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": 32768})

    async def reset_prefix_cache(_: Request) -> Response:
        engine.reset_prefix_cache()
        return Response(status_code=200)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse({
            "worker_id": config.worker_id, "requests_total": engine.requests_total,
            "running": engine.running, "waiting": engine.waiting,
            "completed": engine.completed, "failed": engine.failed,
            "cancelled": engine.cancelled, "prompt_tokens": engine.prompt_tokens_total,
            "cached_tokens": engine.cached_tokens_total, "cache_blocks": len(engine.cache),
            "lora_loads": 0 if engine.loras is None else engine.loras.loads,
            "lora_load_calls": engine.lora_load_calls,
            "lora_adapters": [] if engine.loras is None else list(engine.loras.registered),
        })

    app = Starlette(routes=[
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages, methods=["POST"]),
        *(Route(path, cross_encode, methods=["POST"])
          for path in ("/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score")),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/metrics", prometheus),
        Route("/sim/stats", stats),
        Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        Route("/sim/control", control, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        *(pd.routes() if pd is not None else []),
        *([Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
           Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"])]
          if config.runtime_lora_updating else []),
    ])
    return _WorkerHeader(app, config.worker_id)


def _cached(run: SimRun) -> dict[str, int]:
    """`usage.prompt_tokens_details`: the prompt tokens served from the prefix cache, as
    SGLang reports them (with --enable-cache-report) and vLLM (--enable-prompt-tokens-details;
    vllm/entrypoints/openai/serving_chat.py sets it only when some tokens were cached, so
    there an absent count may mean 0 - the sim always sends it, 0 included)."""
    return {"cached_tokens": run.cached_tokens}


async def _stream(
    engine: SimEngine, prompt: list[str], chat: bool, base: dict[str, Any], n_out: int,
    usage: dict[str, Any], prefilled: bool = False, adapter: str | None = None,
) -> AsyncIterator[bytes]:
    """SSE chunks, one per token, then a finish chunk, a usage chunk and `data: [DONE]`.

    The usage chunk is sent whether or not the client asked for `stream_options.include_usage`:
    OpenAI clients ignore a chunk with empty `choices`, and tests and benchmarks always get
    token counts. The request counts as completed once its last token is out; the trailer is
    sent after its running slot is released, as an engine's scheduler frees it at that point.
    """
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**base, "object": obj, "choices": choices,
                                       **extra}).encode() + b"\n\n"

    async with engine.admitted(prompt, prefilled, adapter) as run:
        await run.first_token()
        for i in range(n_out):
            if i:
                await run.next_token()
            token = engine.token(i)
            if chat:
                delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
                yield event([{"index": 0, "delta": delta, "finish_reason": None}])
            else:
                yield event([{"index": 0, "text": token, "finish_reason": None}])
        run.finish()
    usage["prompt_tokens_details"] = _cached(run)
    last: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    yield event([last])
    yield event([], usage=usage)
    yield b"data: [DONE]\n\n"


class _AnnouncingServer(uvicorn.Server):
    """Prints one line once the port is bound: with logging at WARNING a sim would otherwise
    say nothing, and a new user cannot tell a running sim from a hung one."""

    def __init__(self, config: uvicorn.Config, line: str) -> None:
        super().__init__(config)
        self._line = line

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._line, flush=True)


def run_sim(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted; one start-up line, then warnings only and no access log, so a
    fleet of sims stays quiet."""
    server_config = uvicorn.Config(create_app(config, host, port), host=host, port=port,
                                   log_level="warning", access_log=False, lifespan="off",
                                   ws="none")
    line = (f"llm-picker sim {config.worker_id!r} serving model {config.model!r} on "
            f"http://{host}:{port}")
    _AnnouncingServer(server_config, line).run()
