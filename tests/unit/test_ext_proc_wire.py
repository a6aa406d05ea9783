"""Wire compatibility of the project's minimal ext_proc proto with upstream Envoy's.

Each case builds the *same* logical message twice, independently: once with our upb classes
(extproc._pb.ext_proc_pb2) and once with envoy-data-plane's betterproto2 classes, which are
generated from the full upstream protos. Bytes produced by one side must parse on the other
side into a message equal to the other side's own construction. That checks field numbers,
wire types and that our field names match upstream's for the same number.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import betterproto2
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.internal import api_implementation

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb

with warnings.catch_warnings():
    # envoy-data-plane 2.2's generated classes trip Pydantic 2.12+ deprecation warnings on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.core import v3 as core
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc import v3 as ext_proc_filter
    from envoy_data_plane.envoy.service.ext_proc import v3 as ep
    from envoy_data_plane.envoy.type import v3 as http_type
    from envoy_data_plane.google import protobuf as bp_wkt

ENDPOINT = "127.0.0.1:8000"
DEST_HEADER = "x-gateway-destination-endpoint"
LB_METADATA = {"envoy.lb": {DEST_HEADER: ENDPOINT}}
ERROR_BODY = json.dumps({"error": {"message": "model 'nope' not found", "code": 400}}).encode()
CHAT_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'


def _upb_struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _upb_headers(pairs: list[tuple[str, bytes]]) -> pb.HeaderMap:
    return pb.HeaderMap(headers=[pb.HeaderValue(key=k, raw_value=v) for k, v in pairs])


def _bp_headers(pairs: list[tuple[str, bytes]]) -> core.HeaderMap:
    return core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v) for k, v in pairs])


REQ_HEADERS = [
    (":method", b"POST"),
    (":path", b"/v1/chat/completions"),
    (":authority", b"gateway.local"),
    ("content-type", b"application/json"),
    ("x-session-id", b"\xffnot-utf8\x00"),  # raw_value is bytes: arbitrary octets survive
]
RESP_TRAILERS = [("grpc-status", b"0"), ("x-usage", b"42")]


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    upb: Callable[[], Any]  # builds the message with our upb classes
    bp: Callable[[], betterproto2.Message]  # builds the same message with envoy-data-plane


REQUEST_CASES = [
    Case(
        "request_headers",
        lambda: pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=_upb_headers(REQ_HEADERS), end_of_stream=False),
            metadata_context=pb.Metadata(
                filter_metadata={"envoy.filters.http.ext_proc": _upb_struct({"k": "v"})}
            ),
            attributes={"request.path": _upb_struct({"v": "/v1/chat/completions"})},
            observability_mode=False,
            protocol_config=pb.ProtocolConfiguration(
                request_body_mode=pb.FULL_DUPLEX_STREAMED,
                response_body_mode=pb.NONE,
                send_body_without_waiting_for_header_response=True,
            ),
        ),
        lambda: ep.ProcessingRequest(
            request_headers=ep.HttpHeaders(headers=_bp_headers(REQ_HEADERS), end_of_stream=False),
            metadata_context=core.Metadata(
                filter_metadata={"envoy.filters.http.ext_proc": bp_wkt.Struct.from_dict({"k": "v"})}
            ),
            attributes={"request.path": bp_wkt.Struct.from_dict({"v": "/v1/chat/completions"})},
            observability_mode=False,
            protocol_config=ep.ProtocolConfiguration(
                request_body_mode=ext_proc_filter.ProcessingModeBodySendMode.FULL_DUPLEX_STREAMED,
                response_body_mode=ext_proc_filter.ProcessingModeBodySendMode.NONE,
                send_body_without_waiting_for_header_response=True,
            ),
        ),
    ),
    Case(
        "response_headers_eos",
        lambda: pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=_upb_headers([(":status", b"200")]), end_of_stream=True
            ),
            observability_mode=True,
        ),
        lambda: ep.ProcessingRequest(
            response_headers=ep.HttpHeaders(
                headers=_bp_headers([(":status", b"200")]), end_of_stream=True
            ),
            observability_mode=True,
        ),
    ),
    Case(
        "request_body_chunk",
        lambda: pb.ProcessingRequest(
            request_body=pb.HttpBody(body=CHAT_BODY[:20], end_of_stream=False)
        ),
        lambda: ep.ProcessingRequest(
            request_body=ep.HttpBody(body=CHAT_BODY[:20], end_of_stream=False)
        ),
    ),
    Case(
        "request_body_last",
        lambda: pb.ProcessingRequest(
            request_body=pb.HttpBody(body=CHAT_BODY[20:], end_of_stream=True)
        ),
        lambda: ep.ProcessingRequest(
            request_body=ep.HttpBody(body=CHAT_BODY[20:], end_of_stream=True)
        ),
    ),
    Case(
        "response_body_empty_eos",
        lambda: pb.ProcessingRequest(response_body=pb.HttpBody(body=b"", end_of_stream=True)),
        lambda: ep.ProcessingRequest(response_body=ep.HttpBody(body=b"", end_of_stream=True)),
    ),
    Case(
        "request_trailers",
        lambda: pb.ProcessingRequest(
            request_trailers=pb.HttpTrailers(trailers=_upb_headers([("x-t", b"1")]))
        ),
        lambda: ep.ProcessingRequest(
            request_trailers=ep.HttpTrailers(trailers=_bp_headers([("x-t", b"1")]))
        ),
    ),
    Case(
        "response_trailers",
        lambda: pb.ProcessingRequest(
            response_trailers=pb.HttpTrailers(trailers=_upb_headers(RESP_TRAILERS))
        ),
        lambda: ep.ProcessingRequest(
            response_trailers=ep.HttpTrailers(trailers=_bp_headers(RESP_TRAILERS))
        ),
    ),
]


def _upb_dest_headers_response() -> pb.ProcessingResponse:
    r = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                status=pb.CommonResponse.CONTINUE,
                header_mutation=pb.HeaderMutation(
                    set_headers=[
                        pb.HeaderValueOption(
                            header=pb.HeaderValue(key=DEST_HEADER, raw_value=ENDPOINT.encode()),
                            append_action=pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ],
                    remove_headers=["x-gateway-destination-endpoint-served", "content-length"],
                ),
                clear_route_cache=True,
            )
        )
    )
    r.dynamic_metadata.update(LB_METADATA)
    return r


def _bp_dest_headers_response() -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        request_headers=ep.HeadersResponse(
            response=ep.CommonResponse(
                status=ep.CommonResponseResponseStatus.CONTINUE,
                header_mutation=ep.HeaderMutation(
                    set_headers=[
                        core.HeaderValueOption(
                            header=core.HeaderValue(key=DEST_HEADER, raw_value=ENDPOINT.encode()),
                            append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ],
                    remove_headers=["x-gateway-destination-endpoint-served", "content-length"],
                ),
                clear_route_cache=True,
            )
        ),
        dynamic_metadata=bp_wkt.Struct.from_dict(LB_METADATA),
    )


RESPONSE_CASES = [
    Case("headers_response_destination", _upb_dest_headers_response, _bp_dest_headers_response),
    Case(
        "headers_response_replace_body",
        lambda: pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    status=pb.CommonResponse.CONTINUE_AND_REPLACE,
                    body_mutation=pb.BodyMutation(body=CHAT_BODY),
                )
            )
        ),
        lambda: ep.ProcessingResponse(
            request_headers=ep.HeadersResponse(
                response=ep.CommonResponse(
                    status=ep.CommonResponseResponseStatus.CONTINUE_AND_REPLACE,
                    body_mutation=ep.BodyMutation(body=CHAT_BODY),
                )
            )
        ),
    ),
    Case(
        "body_response_streamed",
        lambda: pb.ProcessingResponse(
            request_body=pb.BodyResponse(
                response=pb.CommonResponse(
                    body_mutation=pb.BodyMutation(
                        streamed_response=pb.StreamedBodyResponse(
                            body=CHAT_BODY, end_of_stream=True
                        )
                    )
                )
            )
        ),
        lambda: ep.ProcessingResponse(
            request_body=ep.BodyResponse(
                response=ep.CommonResponse(
                    body_mutation=ep.BodyMutation(
                        streamed_response=ep.StreamedBodyResponse(
                            body=CHAT_BODY, end_of_stream=True
                        )
                    )
                )
            )
        ),
    ),
    Case(
        "response_body_clear",
        lambda: pb.ProcessingResponse(
            response_body=pb.BodyResponse(
                response=pb.CommonResponse(body_mutation=pb.BodyMutation(clear_body=True))
            )
        ),
        lambda: ep.ProcessingResponse(
            response_body=ep.BodyResponse(
                response=ep.CommonResponse(body_mutation=ep.BodyMutation(clear_body=True))
            )
        ),
    ),
    Case(
        "response_headers_empty_ack",
        lambda: pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
        lambda: ep.ProcessingResponse(response_headers=ep.HeadersResponse()),
    ),
    Case(
        "trailers_response",
        lambda: pb.ProcessingResponse(
            response_trailers=pb.TrailersResponse(
                header_mutation=pb.HeaderMutation(remove_headers=["x-usage"])
            )
        ),
        lambda: ep.ProcessingResponse(
            response_trailers=ep.TrailersResponse(
                header_mutation=ep.HeaderMutation(remove_headers=["x-usage"])
            )
        ),
    ),
    Case(
        "immediate_response_400",
        lambda: pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=pb.HttpStatus(code=400),
                headers=pb.HeaderMutation(
                    set_headers=[
                        pb.HeaderValueOption(
                            header=pb.HeaderValue(
                                key="content-type", raw_value=b"application/json"
                            ),
                            append_action=pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ]
                ),
                body=ERROR_BODY,
                details="llm_picker_model_not_found",
            )
        ),
        lambda: ep.ProcessingResponse(
            immediate_response=ep.ImmediateResponse(
                status=http_type.HttpStatus(code=http_type.StatusCode.BadRequest),
                headers=ep.HeaderMutation(
                    set_headers=[
                        core.HeaderValueOption(
                            header=core.HeaderValue(
                                key="content-type", raw_value=b"application/json"
                            ),
                            append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                        )
                    ]
                ),
                body=ERROR_BODY,
                details="llm_picker_model_not_found",
            )
        ),
    ),
]

ALL_CASES = [pytest.param(c, id=f"req-{c.id}") for c in REQUEST_CASES] + [
    pytest.param(c, id=f"resp-{c.id}") for c in RESPONSE_CASES
]


# --------------------------------------------------------------------------- tests


def test_runtime_is_upb() -> None:
    assert api_implementation.Type() == "upb"


@pytest.mark.parametrize("case", ALL_CASES)
def test_upb_to_betterproto(case: Case) -> None:
    ours = case.upb()
    data = ours.SerializeToString()
    theirs = type(case.bp()).parse(data)
    assert theirs == case.bp()
    # Same oneof arm selected on both sides.
    oneof = "request" if isinstance(ours, pb.ProcessingRequest) else "response"
    assert betterproto2.which_one_of(theirs, oneof)[0] == ours.WhichOneof(oneof)


@pytest.mark.parametrize("case", ALL_CASES)
def test_betterproto_to_upb(case: Case) -> None:
    theirs = case.bp()
    data = bytes(theirs)
    ours = type(case.upb()).FromString(data)
    assert ours == case.upb()
    # Nothing that upstream set was left unrecognized by our subset for these cases.
    assert ours.SerializeToString(deterministic=True) == case.upb().SerializeToString(
        deterministic=True
    )


def test_destination_response_fields_seen_by_upstream() -> None:
    """Spell out the fields Envoy acts on, as decoded by the upstream schema."""
    theirs = ep.ProcessingResponse.parse(_upb_dest_headers_response().SerializeToString())
    common = theirs.request_headers.response
    (opt,) = common.header_mutation.set_headers
    assert opt.header.key == DEST_HEADER
    assert opt.header.raw_value == b"127.0.0.1:8000"
    assert opt.append_action is core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    assert common.clear_route_cache is True
    assert theirs.dynamic_metadata.to_dict() == LB_METADATA


def test_immediate_response_fields_seen_by_upstream() -> None:
    upb_msg = RESPONSE_CASES[-1].upb()
    theirs = ep.ProcessingResponse.parse(upb_msg.SerializeToString())
    imm = theirs.immediate_response
    assert imm.status.code == http_type.StatusCode.BadRequest == 400
    assert json.loads(imm.body) == json.loads(ERROR_BODY)
    assert imm.headers.set_headers[0].header.raw_value == b"application/json"


def test_upstream_only_fields_are_tolerated() -> None:
    """Envoy may send fields our subset omits; upb keeps them as unknown fields, no error."""
    theirs = ep.ProcessingRequest(
        request_body=ep.HttpBody(
            body=b"{}", end_of_stream=True, end_of_stream_without_message=True
        ),
        metadata_context=core.Metadata(
            filter_metadata={"a": bp_wkt.Struct.from_dict({"b": 1.0})},
            typed_filter_metadata={
                "t": bp_wkt.Any(type_url="type.googleapis.com/x.Y", value=b"\x08\x01")
            },
        ),
    )
    ours = pb.ProcessingRequest.FromString(bytes(theirs))
    assert ours.WhichOneof("request") == "request_body"
    assert ours.request_body.body == b"{}"
    assert ours.request_body.end_of_stream is True
    assert json_format.MessageToDict(ours.metadata_context.filter_metadata["a"]) == {"b": 1.0}
    # Unknown fields survive a re-serialization (and so parse back upstream unchanged).
    assert ep.ProcessingRequest.parse(ours.SerializeToString()) == theirs


def test_method_path_matches_service_descriptor() -> None:
    service = pb.DESCRIPTOR.services_by_name["ExternalProcessor"]
    method = service.methods_by_name["Process"]
    assert f"/{service.full_name}/{method.name}" == PROCESS_METHOD
    assert PROCESS_METHOD == "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    assert method.client_streaming and method.server_streaming
    assert method.input_type is pb.ProcessingRequest.DESCRIPTOR
    assert method.output_type is pb.ProcessingResponse.DESCRIPTOR
