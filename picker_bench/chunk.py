"""`llm-picker bench chunk`: the picker's own work per echoed response chunk, in process.

In FULL_DUPLEX_STREAMED response mode every SSE chunk passes through the picker. This times
what the picker adds per chunk - decode the ProcessingRequest, `RequestStream.handle` (response
statistics, the echo answer) and encode the answer - against decode + encode alone, with no gRPC:
what is left of the per-message cost measured behind Envoy is the gRPC runtime's.
"""

from __future__ import annotations

import json
import time

from extproc._pb import ext_proc_pb2 as pb
from extproc.stream import RequestStream
from picker.config import PickerConfig
from picker.runtime import PickerRuntime

__all__ = ["run_chunk"]

_CHUNK = (b'data: {"id":"cmpl-1","object":"text_completion",'
          b'"choices":[{"index":0,"text":"tok "}]}\n\n')


def _headers(items: dict[str, str], into: pb.HeaderMap) -> None:
    for key, value in items.items():
        header = into.headers.add()
        header.key, header.raw_value = key, value.encode()


def _streaming_request(runtime: PickerRuntime) -> RequestStream:
    """A stream routed and past its response headers, ready for response chunks."""
    stream = RequestStream(runtime.routing, 1 << 20)
    start = pb.ProcessingRequest()
    start.protocol_config.request_body_mode = pb.FULL_DUPLEX_STREAMED
    start.protocol_config.response_body_mode = pb.FULL_DUPLEX_STREAMED
    _headers({":path": "/v1/completions", ":method": "POST",
              "content-type": "application/json"}, start.request_headers.headers)
    stream.handle(start)
    body = pb.ProcessingRequest()
    body.request_body.body = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
    body.request_body.end_of_stream = True
    stream.handle(body)
    answer = pb.ProcessingRequest()
    _headers({":status": "200", "content-type": "text/event-stream"},
             answer.response_headers.headers)
    stream.handle(answer)
    return stream


def run_chunk(chunks: int = 100_000) -> int:
    runtime = PickerRuntime(PickerConfig.model_validate(
        {"workers": [{"url": "127.0.0.1:8001", "models": ["m"]}]}))
    stream = _streaming_request(runtime)
    message = pb.ProcessingRequest()
    message.response_body.body = _CHUNK
    wire = message.SerializeToString()
    started = time.perf_counter()
    for _ in range(chunks):
        for answer in stream.handle(pb.ProcessingRequest.FromString(wire)):
            answer.SerializeToString()
    picker = (time.perf_counter() - started) / chunks * 1e6
    started = time.perf_counter()
    for _ in range(chunks):
        pb.ProcessingRequest.FromString(wire).SerializeToString()
    codec_only = (time.perf_counter() - started) / chunks * 1e6
    print(f"{chunks} response chunks of {len(_CHUNK)} bytes, in process (no gRPC):")
    print(f"  decode + RequestStream.handle + encode: {picker:6.2f} us per chunk")
    print(f"  decode + encode alone:                  {codec_only:6.2f} us per chunk")
    return 0
