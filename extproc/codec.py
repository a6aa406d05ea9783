"""Builds the few ext_proc responses the picker sends, with the C-backed protobuf classes.

Everything here is a pure function of its arguments, so the stream handler stays testable
without gRPC and every response shape is written once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf import struct_pb2

from extproc._pb import ext_proc_pb2 as pb
from picker.errors import RequestError
from picker.routing import control_headers
from picker.routing.destination import Headers

__all__ = [
    "BODY_CHUNK_BYTES",
    "DESTINATION_HEADER",
    "LB_METADATA_NAMESPACE",
    "SERVED_KEY",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "Route",
    "continue_body",
    "continue_headers",
    "continue_response_body",
    "continue_response_headers",
    "continue_response_trailers",
    "continue_trailers",
    "echo_response_body",
    "headers_to_dict",
    "immediate_error",
    "immediate_json",
    "immediate_reply",
    "metadata_string",
    "metadata_strings",
    "route_buffered",
    "route_headers",
    "route_streamed",
]

# Header and metadata names of the Gateway API Inference Extension, so GIE-style Envoy configs
# (ORIGINAL_DST with use_http_header, or metadata-keyed LB) work unchanged.
DESTINATION_HEADER = control_headers.DESTINATION
LB_METADATA_NAMESPACE = "envoy.lb"
# Endpoint Picker Protocol v1 (gateway-api-inference-extension, proposal 004): the gateway may
# restrict the candidates (request metadata) and reports the endpoint that served (response
# metadata), since its retries may have walked the fallback list.
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = control_headers.SUBSET
SERVED_KEY = control_headers.SERVED
# The largest body a streamed mutation carries: some Envoy builds cap one at 64 KiB, and the
# reference picker keeps a margin below it (llm-d-router pkg/common/envoy/chunking.go:26,
# BodyByteLimit = 62000).
BODY_CHUNK_BYTES = 62_000

_OVERWRITE = pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def headers_to_dict(header_map: pb.HeaderMap) -> dict[str, str]:
    """Lower-cased name -> value; Envoy sends values in raw_value (bytes) since v1.28."""
    out: dict[str, str] = {}
    for header in header_map.headers:
        raw = header.raw_value
        out[header.key] = raw.decode("utf-8", "replace") if raw else header.value
    return out


def _set_header(mutation: pb.HeaderMutation, key: str, value: str) -> None:
    option = mutation.set_headers.add()
    option.header.key = key
    option.header.raw_value = value.encode()
    option.append_action = _OVERWRITE


def _metadata_value(message: pb.ProcessingRequest, namespace: str,
                    key: str) -> struct_pb2.Value | None:
    """A value the proxy forwarded in the message's metadata_context, None if absent."""
    if not message.HasField("metadata_context"):
        return None
    spaces = message.metadata_context.filter_metadata
    if namespace not in spaces:
        return None
    return spaces[namespace].fields.get(key)


def metadata_string(message: pb.ProcessingRequest, namespace: str, key: str) -> str | None:
    """A string the proxy forwarded in the message's metadata_context, None if absent."""
    value = _metadata_value(message, namespace, key)
    return value.string_value if value is not None and value.HasField("string_value") else None


def metadata_strings(message: pb.ProcessingRequest, namespace: str,
                     key: str) -> list[str] | None:
    """A list of strings in the metadata_context (a comma-separated string counts as one);
    None when the key is absent, which is not the same as an empty list."""
    value = _metadata_value(message, namespace, key)
    if value is None:
        return None
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values if v.string_value]
    return [part.strip() for part in value.string_value.split(",") if part.strip()]


def _destination_metadata(response: pb.ProcessingResponse, destination: str) -> None:
    response.dynamic_metadata.fields[LB_METADATA_NAMESPACE].struct_value.fields[
        DESTINATION_HEADER
    ].string_value = destination


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the destination (`host:port`, with fallbacks after commas) for
    the `envoy.lb` metadata, and every header to set on the way (destination included:
    picker.routing.destination)."""

    destination: str
    headers: Headers = ()


def _route(mutation: pb.HeaderMutation, route: Route) -> None:
    """Set what the worker needs and remove every other control header a client sent
    (picker.routing.control_headers): a header is either set here or removed, never passed on."""
    for key, value in route.headers:
        _set_header(mutation, key, value)
    mutation.remove_headers.extend(_removed_besides(tuple(key for key, _ in route.headers)))


@functools.cache
def _removed_besides(written: tuple[str, ...]) -> tuple[str, ...]:
    """The control headers to remove when `written` are set: a handful of distinct sets
    (destination, rank, key, a PD protocol's), so each list is built once."""
    return tuple(name for name in control_headers.STRIPPED if name not in written)


# Answers that never vary are built once; grpc only reads them to serialize.
_CONTINUE_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
_CONTINUE_TRAILERS = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
_CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(response=pb.CommonResponse()))
_CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(
    response_body=pb.BodyResponse(response=pb.CommonResponse()))
_CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


_CONTINUE_HEADERS = pb.ProcessingResponse()
_CONTINUE_HEADERS.request_headers.response.header_mutation.remove_headers.extend(
    control_headers.STRIPPED)


def continue_headers() -> pb.ProcessingResponse:
    """BUFFERED mode's answer to the headers, before routing: let them through minus every
    control header (the routing answer, on the body, removes them again with its own sets)."""
    return _CONTINUE_HEADERS


def continue_body() -> pb.ProcessingResponse:
    return _CONTINUE_BODY


def continue_trailers() -> pb.ProcessingResponse:
    return _CONTINUE_TRAILERS


def continue_response_headers(set_headers: dict[str, str] | None = None,
                              remove: tuple[str, ...] = ()) -> pb.ProcessingResponse:
    if not set_headers and not remove:
        return _CONTINUE_RESPONSE_HEADERS
    response = pb.ProcessingResponse()
    common = response.response_headers.response
    common.SetInParent()
    for key, value in (set_headers or {}).items():
        _set_header(common.header_mutation, key, value)
    common.header_mutation.remove_headers.extend(remove)
    return response


def _streamed_bodies(body: bytes, end_of_stream: bool,
                     request: bool) -> list[pb.ProcessingResponse]:
    """A body as streamed mutations of at most BODY_CHUNK_BYTES each, end of stream on the
    last only; an empty body is one empty mutation (it may still carry the end of stream)."""
    out: list[pb.ProcessingResponse] = []
    last = max(len(body) - 1, 0) // BODY_CHUNK_BYTES * BODY_CHUNK_BYTES
    for start in range(0, last + 1, BODY_CHUNK_BYTES):
        response = pb.ProcessingResponse()
        common = response.request_body.response if request else response.response_body.response
        streamed = common.body_mutation.streamed_response
        streamed.body = body[start:start + BODY_CHUNK_BYTES]
        streamed.end_of_stream = end_of_stream and start == last
        out.append(response)
    return out


def echo_response_body(chunk: bytes, end_of_stream: bool) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED response mode: a chunk handed back unchanged (in pieces, when it is
    over BODY_CHUNK_BYTES). This mode allows no plain "continue": every chunk must come back
    as a streamed body mutation, in order."""
    return _streamed_bodies(chunk, end_of_stream, request=False)


def continue_response_body() -> pb.ProcessingResponse:
    """BUFFERED or STREAMED response mode: let the body through as it is."""
    return _CONTINUE_RESPONSE_BODY


def continue_response_trailers(remove: tuple[str, ...] = ()) -> pb.ProcessingResponse:
    if not remove:
        return _CONTINUE_RESPONSE_TRAILERS
    response = pb.ProcessingResponse()
    response.response_trailers.header_mutation.remove_headers.extend(remove)
    return response


def route_buffered(route: Route, body: bytes | None = None) -> pb.ProcessingResponse:
    """BUFFERED mode: the whole body arrived in one message; headers may still be mutated.
    `body`: sent upstream instead of the client's (a prefill/decode rewrite), with its length.
    """
    if body is None:
        return _route_answer(route)
    return _route_buffered(route, body)


@functools.lru_cache(maxsize=1024)
def _route_answer(route: Route) -> pb.ProcessingResponse:
    """The answer to a body left as it is, built once per route: a fleet's requests go to a
    few destinations with a few header sets, and building the message (a header mutation, the
    removals, the metadata) allocated ~20 objects and took ~7 us of a BUFFERED request in
    process. grpc only reads it to serialize. With tracing on, each request's route is its own
    (its trace context headers): each takes an entry of the 1,024 and evicts the oldest."""
    return _route_buffered(route, None)


def _route_buffered(route: Route, body: bytes | None) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    common = response.request_body.response
    _route(common.header_mutation, route)
    if body is not None:
        common.body_mutation.body = body
        _set_header(common.header_mutation, "content-length", str(len(body)))
    common.clear_route_cache = True
    _destination_metadata(response, route.destination)
    return response


def route_headers(route: Route) -> pb.ProcessingResponse:
    """The routing answer to request headers: a request without a body (a health probe), or
    FULL_DUPLEX_STREAMED mode's delayed headers answer."""
    headers = pb.ProcessingResponse()
    common = headers.request_headers.response
    _route(common.header_mutation, route)
    common.clear_route_cache = True
    _destination_metadata(headers, route.destination)
    return headers


def route_streamed(route: Route, body: bytes,
                   end_of_stream: bool) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED mode: the delayed headers answer, then the body handed back in
    chunks of at most BODY_CHUNK_BYTES, the end of stream on the last.

    Envoy drops Content-Length in this mode because it cannot know the body we will return; we
    do know it (we return the body unchanged), so we set it and upstreams see a plain request.
    """
    headers = route_headers(route)
    _set_header(headers.request_headers.response.header_mutation, "content-length",
                str(len(body)))
    return [headers, *_streamed_bodies(body, end_of_stream, request=True)]


def immediate_error(error: RequestError, anthropic: bool = False) -> pb.ProcessingResponse:
    """A local reply with the JSON error, OpenAI-shaped (Anthropic-shaped on Anthropic's
    paths); Envoy sends it instead of proxying."""
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = error.status
    _set_header(immediate.headers, "content-type", "application/json")
    for name, value in error.headers().items():
        _set_header(immediate.headers, name, value)
    immediate.body = error.to_json(anthropic)
    immediate.details = f"llm_picker_{error.code}"
    return response


def immediate_reply(status: int, content_type: str, body: bytes,
                    details: str) -> pb.ProcessingResponse:
    """A local reply the picker builds from what the upstream said (a gRPC engine's error,
    rewritten into OpenAI's), sent instead of the upstream's response."""
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = status
    _set_header(immediate.headers, "content-type", content_type)
    immediate.body = body
    immediate.details = details
    return response


def immediate_json(body: bytes) -> pb.ProcessingResponse:
    """A 200 local reply with a JSON body the picker answers itself (`GET /v1/models`)."""
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = 200
    _set_header(immediate.headers, "content-type", "application/json")
    immediate.body = body
    immediate.details = "llm_picker_models"
    return response
