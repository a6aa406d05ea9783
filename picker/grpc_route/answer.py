"""The engine's streamed GenerateResponses as the OpenAI answer the client asked for.

Fed the response body's pieces as the proxy passes them (picker.grpc_route.framing splits the
messages; the worker's engine adapter, picker.grpc_route.engines, reads them), it returns the
bytes to send on: for a streamed request one server-sent event per
GenerateStreamChunk (text detokenized incrementally, picker.tokens.detokenize), then the
finish_reason, the usage chunk when asked and `[DONE]`; otherwise one JSON document once the
GenerateComplete arrives. A chat answer for a worker with parsers passes its text through them
(picker.parsers): `reasoning_content` and `tool_calls` beside `content`, and finish_reason
`tool_calls` when calls came out (SMG processor.rs:170-186). The gRPC status (trailers) ends
it: a failure becomes an OpenAI error object, as a JSON body or, mid-stream, as a
`data: {"error": ...}` event (vLLM's shape, entrypoints/openai/serving_chat.py
`create_streaming_error_response`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from picker.grpc_route.framing import FrameReader, FramingError
from picker.grpc_route.stops import StopStrings
from picker.parsers import OutputParser, Parsed, ToolCall, call_id
from picker.routing.request import Api

# For annotations only: picker.pd.prefill imports this module and picker.grpc_route.engines
# imports picker.pd; picker.tokens needs the hf extra (imported where a tokenizer loads).
if TYPE_CHECKING:
    from picker.grpc_route.engines import Complete, GrpcEngine, StreamChunk
    from picker.tokens.detokenize import Detokenizer

__all__ = ["OpenAIAnswer", "http_status"]

# gRPC status code -> the HTTP status an OpenAI client understands for it (codes: grpc
# doc/statuscodes.md; the inverse of grpc doc/http-grpc-status-mapping.md where one exists).
_HTTP_STATUS = {3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 11: 400, 12: 501, 14: 503,
                16: 401}
_DONE = b"data: [DONE]\n\n"


def http_status(grpc_status: int) -> int:
    return _HTTP_STATUS.get(grpc_status, 500)


class OpenAIAnswer:
    """One request's answer, built from the engine's messages as they pass."""

    __slots__ = ("_engine", "_detokenizer", "_api", "_model", "_id", "_stream", "_usage_chunk",
                 "_created", "_frames", "_text", "_counts", "_started", "_complete", "_failed",
                 "_stops", "_cut", "_parser", "_calls")

    def __init__(self, engine: GrpcEngine, detokenizer: Detokenizer, api: Api, model: str,
                 request_id: str, stream: bool, usage_chunk: bool, stops: Sequence[str] = (),
                 parser: OutputParser | None = None) -> None:
        self._engine = engine
        self._detokenizer = detokenizer
        self._api = api
        self._model = model
        prefix = "chatcmpl-" if api is Api.CHAT else "cmpl-"
        self._id = prefix + request_id
        self._stream = stream
        self._usage_chunk = usage_chunk
        self._created = int(time.time())
        self._frames = FrameReader()
        self._text: list[str] = []
        self._counts = (0, 0, 0)  # prompt, completion, cached tokens (the engine's, cumulative)
        self._started = False  # the first event (the assistant role) is out
        self._complete = False
        self._failed = False
        self._stops = StopStrings(stops)
        self._cut = False  # a stop string ended the answer while the engine generates on
        self._parser = parser
        self._calls = 0  # tool calls sent (a streamed call's index)

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self._stream else "application/json"

    @property
    def streamed(self) -> bool:
        return self._stream

    @property
    def over(self) -> bool:
        """Complete, or failed: the engine has nothing more to say (no Abort to send)."""
        return self._complete or self._failed

    @property
    def cut_short(self) -> bool:
        """A stop string ended the answer before the engine did: its generation is waste."""
        return self._cut

    @property
    def complete(self) -> bool:
        """The GenerateComplete passed: the answer is whole, whatever the stream does next."""
        return self._complete

    def feed(self, piece: bytes) -> bytes:
        """The OpenAI bytes this piece of the engine's body completes (maybe none)."""
        if self._complete or self._failed:
            return b""
        try:
            raw = self._frames.feed(piece)
        except FramingError as exc:
            return self.fail(500, f"the engine's answer could not be read: {exc}")
        return self.feed_messages(raw)

    def feed_messages(self, raw: Iterable[bytes]) -> bytes:
        """`feed` for a caller that receives whole GenerateResponse messages (a gRPC client,
        such as LiteLLM's provider, rather than a proxy's body pieces)."""
        if self._complete or self._failed:
            return b""
        try:
            messages = [self._engine.response(m) for m in raw]
        except ValueError as exc:  # protobuf's DecodeError is a ValueError
            return self.fail(500, f"the engine's answer could not be read: {exc}")
        out = []
        for message in messages:
            kind = message.WhichOneof("response")
            if kind == "chunk":
                out.append(self._chunk(message.chunk))
            elif kind == "complete":
                out.append(self._finish(message.complete))
                break
        return b"".join(out)

    def end(self, grpc_status: int, message: str, document: bool = False) -> bytes:
        """The gRPC status arrived (trailers): what is left to send. `document`: nothing was
        sent yet, so a failure is a JSON error body even for a streamed request."""
        if self._complete or self._failed:
            return b""
        if grpc_status != 0:
            return self.fail(http_status(grpc_status), f"the engine failed the request "
                                                       f"(gRPC status {grpc_status}): {message}",
                             document)
        return self.fail(502, "the engine ended the stream without a result", document)

    def fail(self, status: int, message: str, document: bool = False) -> bytes:
        """An OpenAI error object; `status` decides its type (a 4xx is the client's)."""
        self._failed = True
        kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
        error = json.dumps({"error": {"message": message[:1000], "type": kind,
                                      "code": status}}).encode()
        return b"data: " + error + b"\n\n" + _DONE if self._stream and not document else error

    # -- messages ---------------------------------------------------------------------------

    def _chunk(self, chunk: StreamChunk) -> bytes:
        # vLLM counts each chunk's own tokens; SMG adds them up (response_formatting.rs:45-51).
        completion = self._counts[1] + len(chunk.token_ids) if self._engine.counts_are_deltas \
            else chunk.completion_tokens
        self._counts = (chunk.prompt_tokens, completion, chunk.cached_tokens)
        text, stopped = self._stops.feed(self._detokenizer.step(list(chunk.token_ids)))
        if stopped:
            self._cut = True
            return self._close(text, "stop")
        if not self._stream:
            self._text.append(text)
            return b""
        return self._emit(text)

    def _finish(self, complete: Complete) -> bytes:
        # Streamed, vLLM's GenerateComplete counts only the last delta: the chunks' sum stands
        # (SMG response_formatting.rs:53-64). Unstreamed, it counts the whole output.
        summed = self._stream and self._engine.counts_are_deltas
        self._counts = (complete.prompt_tokens,
                        self._counts[1] if summed else complete.completion_tokens,
                        complete.cached_tokens)
        # A streamed GenerateComplete repeats the last chunk's ids (both servicers build it
        # from the last output; picker_sim.grpc_server says where): already decoded.
        ids = [] if self._stream else list(complete.output_ids)
        text, stopped = self._stops.feed(self._detokenizer.step(ids))
        if stopped:
            return self._close(text, "stop")
        return self._close(text + self._stops.flush(), complete.finish_reason or "stop")

    def _close(self, text: str, reason: str) -> bytes:
        """The answer's end: its last text, finish_reason and usage."""
        self._complete = True
        if not self._stream:
            return self._document("".join(self._text) + text, reason)
        out = [self._emit(text)] if text else []
        if self._parser is not None:
            out.append(self._parsed_events(self._parser.finish()))
            reason = "tool_calls" if self._parser.called else reason
        out.append(self._event("", reason))
        if self._usage_chunk:
            out.append(_sse({**self._head(), "choices": [], "usage": self._usage()}))
        out.append(_DONE)
        return b"".join(out)

    # -- OpenAI shapes ----------------------------------------------------------------------

    def _head(self) -> dict[str, Any]:
        chat = self._api is Api.CHAT
        kind = ("chat.completion.chunk" if self._stream else "chat.completion") if chat \
            else "text_completion"
        return {"id": self._id, "object": kind, "created": self._created, "model": self._model}

    def _usage(self) -> dict[str, Any]:
        prompt, completion, cached = self._counts
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def _emit(self, text: str) -> bytes:
        """The events for a piece of the answer's text (the first one at least names the
        role)."""
        if self._parser is not None:
            return self._parsed_events(self._parser.feed(text))
        return self._event(text, None) if text or not self._started else b""

    def _parsed_events(self, parsed: Parsed) -> bytes:
        """Reasoning, content and each new tool call: its id, type and name, then its
        arguments (OpenAI's streamed tool_calls, by index)."""
        out = [] if self._started else [self._delta({"content": ""}, None)]
        if parsed.reasoning:
            out.append(self._delta({"reasoning_content": parsed.reasoning}, None))
        if parsed.content:
            out.append(self._delta({"content": parsed.content}, None))
        for call in parsed.calls:
            head = {"index": self._calls, **_call(call, "")}
            out.append(self._delta({"tool_calls": [head]}, None))
            out.append(self._delta({"tool_calls": [{"index": self._calls, "function": {
                "arguments": call.arguments}}]}, None))
            self._calls += 1
        return b"".join(out)

    def _event(self, text: str, reason: str | None) -> bytes:
        if self._api is Api.CHAT:
            return self._delta({"content": text}, reason)
        self._started = True
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return _sse({**self._head(), "choices": [choice]})

    def _delta(self, delta: dict[str, Any], reason: str | None) -> bytes:
        if not self._started:
            delta = {"role": "assistant", **delta}
        self._started = True
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return _sse({**self._head(), "choices": [choice]})

    def _message(self, text: str) -> tuple[dict[str, Any], bool]:
        """The chat answer's message, and whether it called tools. Parsed, it is SMG's
        (processor.rs:204-212, protocols chat.rs:730-739): content left out when only
        whitespace remains, tool_calls when there are some, reasoning_content always."""
        if self._parser is None:
            return {"role": "assistant", "content": text}, False
        parsed = self._parser.feed(text)
        parsed += self._parser.finish()
        message: dict[str, Any] = {"role": "assistant"}
        if parsed.content.strip():
            message["content"] = parsed.content
        if parsed.calls:
            message["tool_calls"] = [_call(call, call.arguments) for call in parsed.calls]
        message["reasoning_content"] = parsed.reasoning or None
        return message, bool(parsed.calls)

    def _document(self, text: str, reason: str) -> bytes:
        if self._api is Api.CHAT:
            message, called = self._message(text)
            reason = "tool_calls" if called else reason
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=reason)
        return json.dumps({**self._head(), "choices": [choice],
                           "usage": self._usage()}).encode()


def _call(call: ToolCall, arguments: str) -> dict[str, Any]:
    return {"id": call_id(), "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"
