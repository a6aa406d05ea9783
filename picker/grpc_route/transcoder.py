"""GrpcTranscoder: one OpenAI request to a gRPC worker, both ways.

The routing service makes one when it opens a lease on a worker with `connection_mode: grpc`
(the lease carries it, picker.routing.leases); the adapter that proxies the request applies it:
`headers` and `body` replace the client's request (the Generate call of the worker's engine,
SGLang's or vLLM's by its runtime_type (picker.grpc_route.engines), gRPC-framed, for an HTTP/2
upstream), and `answer` turns the engine's response body and status into the OpenAI
answer, through the worker's tool-call and reasoning parsers (picker.grpc_route.parsing).
For a prefill/decode pair the proxy takes the call to decode while the picker sends the same
`message` to prefill (picker.pd.pairing).
Tokenizers are loaded once per worker tokenizer directory (`WorkerTokenizers`).
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

from picker.errors import ConfigError, RequestError
from picker.fleet.registry import Worker
from picker.grpc_route.abort import AbortCall
from picker.grpc_route.answer import OpenAIAnswer
from picker.grpc_route.engines import GrpcEngine
from picker.grpc_route.framing import frame
from picker.grpc_route.parsing import answer_parser, may_call_tools
from picker.grpc_route.request import generate_call, include_usage
from picker.pd.protocols import Bootstrap
from picker.routing.destination import Headers
from picker.routing.request import RoutingRequest

if TYPE_CHECKING:  # picker.tokens needs the hf extra: imported where a tokenizer loads
    from picker.tokens.tokenizer import EngineTokenizer

__all__ = ["GrpcTranscoder", "TokenizerUnavailable", "WorkerTokenizers"]


class TokenizerUnavailable(RequestError):
    """A gRPC worker whose tokenizer the picker cannot load: no request can be sent to it."""

    status = 503
    code = "tokenizer_unavailable"
    error_type = "service_unavailable_error"


class WorkerTokenizers:
    """A gRPC worker's tokenizer (its `tokenizer_path` and `chat_template`), loaded on the first
    request to it and kept: workers of one model share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str | None], EngineTokenizer] = {}

    def for_worker(self, worker: Worker) -> EngineTokenizer:
        spec = worker.spec
        if not spec.tokenizer_path:
            raise TokenizerUnavailable(
                f"gRPC worker {spec.id!r} has no tokenizer_path (the engine takes token ids: "
                "set it in the worker's entry, or let discovery read it from GetModelInfo)")
        return self.load(spec.tokenizer_path, spec.chat_template, f"workers[{spec.id}]")

    def load(self, path: str, chat_template: str | None, key: str) -> EngineTokenizer:
        """The tokenizer of directory `path` (`key` names where it was configured)."""
        with self._lock:
            loaded = self._loaded.get((path, chat_template))
            if loaded is None:
                from picker.tokens.tokenizer import load_tokenizer

                try:
                    loaded = load_tokenizer(path, chat_template, key=key)
                except ConfigError as exc:
                    raise TokenizerUnavailable(str(exc)) from exc
                self._loaded[(path, chat_template)] = loaded
            return loaded


class GrpcTranscoder:
    __slots__ = ("engine", "message", "body", "headers", "answer", "request_id")

    def __init__(self, engine: GrpcEngine, tokenizer: EngineTokenizer, request: RoutingRequest,
                 tool_parser: str | None = None, reasoning_parser: str | None = None,
                 bootstrap: Bootstrap | None = None) -> None:
        """Raises InvalidRequest naming what the Generate call cannot carry. `engine`: the
        worker's service (picker.grpc_route.engines.engine_for). The parser names are the
        chosen worker's (its spec checked them); `bootstrap`, a pair's rendezvous."""
        assert request.body is not None, "parse_request keeps the body"
        self.engine = engine
        self.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        call = generate_call(request.body, request.api, tokenizer, self.request_id,
                             request.stream, bootstrap)
        self.message = engine.request(call)  # for a gRPC client; `body` for a proxy
        self.body = frame(self.message)
        self.headers: Headers = ((":path", engine.generate_path),
                                 ("content-type", "application/grpc"), ("te", "trailers"))
        usage = request.stream and include_usage(request.body)
        parser = answer_parser(request.body, request.api, tool_parser, reasoning_parser)
        skip = call.sampling.skip_special_tokens and not may_call_tools(request.body,
                                                                         request.api)
        self.answer = OpenAIAnswer(engine, tokenizer.detokenizer(skip),
                                   request.api, request.model, self.request_id,
                                   request.stream, usage, call.sampling.stop, parser)

    def abort(self, reason: str) -> AbortCall:
        """The engine's Abort for this request (picker.grpc_route.abort sends it)."""
        return AbortCall(self.engine.abort_path, self.engine.abort(self.request_id, reason),
                         self.request_id)
