"""What a response says about the worker that served it, learned while an adapter passes it on.

An adapter that sees the response body go by (the ext_proc stream in FULL_DUPLEX_STREAMED
response mode) feeds each chunk to a `ResponseObserver`; at the end the observer yields one
`ResponseSample`: time from the pick to the first streamed chunk (observed TTFT), the mean gap
between later chunks (TPOT, per chunk: engines send one token per SSE event), and the token
counts of the response's `usage` object. The lease book hands the sample to the registry, which
folds it into the worker's `ResponseStats` (what policies read), and to the Prometheus metrics.

Cost is the point: per chunk the observer stores a timestamp and keeps a reference to the chunk
(no copy, no parse). At the end it searches only the last few chunks for the last `"usage"` key
and decodes that one JSON value - the body is never parsed whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from picker.fleet.speed import Observation

__all__ = ["ResponseObserver", "ResponseSample", "ResponseStats", "Usage", "find_usage"]

# The share of a new sample in a worker's moving averages: about the last ten responses count.
_EWMA_WEIGHT = 0.2
_USAGE_KEY = b'"usage"'
_SSE_DONE = b"data: [DONE]\n\n"
# The end of an Anthropic Messages stream: its last event's data line
# (`event: message_stop` + `data: {"type": "message_stop"}`, as vLLM and SGLang send it too).
_MESSAGE_STOP = b'"message_stop"}'
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts an engine reports in OpenAI's `usage` object."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # usage.prompt_tokens_details.cached_tokens (vLLM, SGLang, OpenAI); None when the engine
    # sent no count, which is not 0 cached: the prediction audit must not read it as a miss.
    cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ResponseSample:
    """One finished response as observed in passing."""

    ttft_secs: float | None  # pick -> first chunk; None unless the response streamed (SSE)
    per_chunk_secs: float | None  # mean gap between streamed chunks after the first
    chunks: int
    usage: Usage | None

    @classmethod
    def reported(cls, observation: Observation) -> ResponseSample:
        """A response its proxy reported instead of passing it by (LiteLLM's success
        callback), for what reads answers: the prediction audit, the latency learner, the
        trace, a flow's token count."""
        out = observation.output_tokens
        decode = observation.decode_secs
        known = observation.prompt_tokens is not None or out is not None
        return cls(
            ttft_secs=observation.ttft_secs,
            per_chunk_secs=decode / (out - 1) if decode is not None and out and out > 1
            else None,
            chunks=out or 0,
            usage=Usage(observation.prompt_tokens or 0, out or 0, observation.cached_tokens)
            if known else None)

    def observation(self) -> Observation:
        """What the speed model learns from it (picker.fleet.speed)."""
        usage = self.usage
        decode = (self.per_chunk_secs * (self.chunks - 1)
                  if self.per_chunk_secs is not None and self.chunks > 1 else None)
        return Observation(
            prompt_tokens=None if usage is None else usage.prompt_tokens,
            cached_tokens=None if usage is None else usage.cached_tokens,
            output_tokens=None if usage is None else usage.completion_tokens,
            ttft_secs=self.ttft_secs, decode_secs=decode)


@dataclass(frozen=True, slots=True)
class ResponseStats:
    """A worker's observed speed, as moving averages; replaced whole on each sample, so readers
    on the hot path see a consistent snapshot without a lock."""

    ttft_secs: float | None = None
    per_chunk_secs: float | None = None
    responses: int = 0

    def updated(self, sample: ResponseSample) -> ResponseStats:
        return ResponseStats(_ewma(self.ttft_secs, sample.ttft_secs),
                             _ewma(self.per_chunk_secs, sample.per_chunk_secs),
                             self.responses + 1)


def _ewma(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    return new if old is None else old + _EWMA_WEIGHT * (new - old)


class ResponseObserver:
    """Watches one response body go by, chunk by chunk."""

    __slots__ = ("_started", "_streamed", "_length", "_seen", "_first", "_last", "_chunks",
                 "_tail")

    def __init__(self, started: float, streamed: bool, length: int | None = None) -> None:
        """`started`: time.monotonic() of the pick; `streamed`: the response is SSE (only then
        is the first chunk a first token rather than the whole answer); `length`: the body's
        Content-Length when the engine sent one."""
        self._started = started
        self._streamed = streamed
        self._length = length
        self._seen = 0
        self._first = 0.0
        self._last = 0.0
        self._chunks = 0
        # The last three chunks, by reference: a usage object split across chunk boundaries
        # is still whole once they are joined, and `data: [DONE]` may follow it on its own.
        self._tail: tuple[bytes, ...] = ()

    def chunk(self, data: bytes, now: float) -> None:
        if not data:
            return
        if not self._chunks:
            self._first = now
        self._last = now
        self._chunks += 1
        self._seen += len(data)
        self._tail = (*self._tail[-2:], data)

    @property
    def complete(self) -> bool:
        """The whole answer went by, even if the end-of-stream mark did not: OpenAI clients
        hang up once they read `data: [DONE]`, often before the proxy passes the stream's end
        on, and that is a finished request, not a cancelled one (Anthropic's SDKs likewise
        once they read `message_stop`)."""
        if self._length is not None:
            return self._seen >= self._length
        if not self._tail:
            return False
        last = self._tail[-1]
        return last.endswith(_SSE_DONE) or last.rstrip().endswith(_MESSAGE_STOP)

    def sample(self) -> ResponseSample:
        streamed = self._streamed and self._chunks > 0
        return ResponseSample(
            ttft_secs=self._first - self._started if streamed else None,
            per_chunk_secs=((self._last - self._first) / (self._chunks - 1)
                            if streamed and self._chunks > 1 else None),
            chunks=self._chunks,
            usage=find_usage(b"".join(self._tail)) if self._tail else None,
        )


def find_usage(tail: bytes) -> Usage | None:
    """The last `"usage": {...}` object in `tail` (the end of a JSON body or an SSE stream);
    None when there is none (streams without stream_options.include_usage)."""
    at = tail.rfind(_USAGE_KEY)
    while at >= 0:
        text = tail[at + len(_USAGE_KEY):].decode("utf-8", "replace").lstrip()
        if text.startswith(":"):
            try:
                value, _ = _DECODER.raw_decode(text[1:].lstrip())
            except ValueError:
                value = None
            if isinstance(value, Mapping):
                return _usage_of(value)
        at = tail.rfind(_USAGE_KEY, 0, at)  # `"usage": null` in a chunk: look further back
    return None


def _usage_of(value: Mapping[str, Any]) -> Usage:
    """OpenAI's usage object, or Anthropic's (`input_tokens`, `output_tokens`,
    `cache_read_input_tokens`: the Messages API's names, which vLLM and SGLang use there)."""
    if "input_tokens" in value or "output_tokens" in value:
        cached = value.get("cache_read_input_tokens")
        return Usage(_count(value.get("input_tokens")), _count(value.get("output_tokens")),
                     None if cached is None else _count(cached))
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(_count(value.get("prompt_tokens")), _count(value.get("completion_tokens")),
                 None if cached is None else _count(cached))


def _count(value: object) -> int:
    """A token count from an engine we do not control: anything but a count is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
