"""The three ways a prefill/decode pair is told about each other, as pure body/header rewrites.

- SGLang bootstrap (SGLang's PD router, mini_lb): both workers get the body with
  `bootstrap_host`, `bootstrap_port` (the prefill worker's bootstrap server) and
  `bootstrap_room` (a random 63-bit id; one per prompt for batched inputs); the decode worker
  pulls the KV cache of that room from the prefill worker. With data-parallel ranks the room
  names the prefill rank too (`room % dp_size`), and the rank fields say it outright.
  Over gRPC (SMG's gRPC PD router) the same three travel in the Generate call's
  DisaggregatedParams, identical on both legs (`grpc_bootstrap`).
- vLLM NIXL two-step (vLLM's disaggregated-serving proxy): the prefill worker gets the body
  capped at one output token, `stream: false` and `kv_transfer_params: {do_remote_decode:
  true}`; its reply's `kv_transfer_params` go into the decode worker's body. A reply without
  them (the prefill stopped before its length cap) sends decode the client's request as is.
- llm-d routing sidecar: the decode worker's sidecar runs the prefill itself; the request
  goes to decode with `x-prefiller-host-port: <prefill host:port>`.

Which one a pair speaks follows the decode worker's spec (`protocol_of`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from picker.fleet.runtime_type import RuntimeType
from picker.routing import control_headers
from picker.routing.request import Api

if TYPE_CHECKING:  # the simulated engines import this module without the models
    from picker.fleet.worker_spec import WorkerSpec

__all__ = [
    "PREFILLER_HEADER", "REQUEST_ID_HEADER", "Bootstrap", "PdProtocol", "SglangPair",
    "grpc_bootstrap", "nixl_prefill_body", "protocol_of", "with_bootstrap",
    "with_kv_transfer_params",
]

# llm-d's routing sidecar reads the prefill worker's address from this request header.
PREFILLER_HEADER = control_headers.PREFILLER
# Both legs carry one request id, as vLLM's NIXL proxy sends them
# (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py, send_request_to_service and
# stream_service_response: "X-Request-Id": request_id) and llm-d's sidecar does
# (pkg/sidecar/proxy/connector_nixlv2.go:100 and :310): vLLM releases without
# `remote_request_id` in kv_transfer_params free the prefill's blocks by the decode's id.
REQUEST_ID_HEADER = "x-request-id"

# The output-token limits each API reads, all capped at one token on the prefill leg (llm-d
# pkg/sidecar/proxy/proxy.go:143-145, applied in connector_nixlv2.go:179-181). `min_tokens` at
# one is also the cap's floor: vLLM masks EOS and stop strings below it, so the prefill ends by
# length, the one status for which every NixlConnector release returns kv_transfer_params.
_PREFILL_TOKEN_LIMITS: Mapping[Api, tuple[str, ...]] = {
    Api.CHAT: ("max_tokens", "min_tokens"),
    Api.COMPLETIONS: ("max_tokens", "min_tokens"),
    Api.RESPONSES: ("max_output_tokens",),  # vLLM entrypoints/openai/responses/protocol.py:273
}
# Capped only when the client sent it (vLLM's toy proxy: `if "max_completion_tokens" in
# req_data`): completions does not declare it.
_PREFILL_LIMITS_IF_SENT = ("max_completion_tokens",)

# The bootstrap port SGLang's prefill engines listen on unless told another
# (--disaggregation-bootstrap-port), which SMG assumes for a worker that names none
# (model_gateway/src/worker/worker.rs:71, DEFAULT_BOOTSTRAP_PORT).
DEFAULT_BOOTSTRAP_PORT = 8998
# Rooms are 63-bit in SGLang's HTTP bodies; DisaggregatedParams.bootstrap_room is an int32
# (sglang_scheduler.proto:117), and SMG draws it from 0..i32::MAX
# (model_gateway/src/routers/grpc/common/stages/helpers.rs:442).
_HTTP_ROOMS = 2**63
_GRPC_ROOMS = 2**31 - 1

# kv_connector values (case-insensitive) that mean the llm-d routing sidecar does the prefill.
_SIDECAR_CONNECTORS = frozenset({"llm-d", "llm-d-sidecar", "sidecar"})


class PdProtocol(enum.StrEnum):
    SGLANG = "sglang"
    NIXL = "nixl"
    SIDECAR = "sidecar"


def protocol_of(decode: WorkerSpec) -> PdProtocol:
    """SGLang engines bootstrap; an llm-d sidecar connector gets the header; other engines
    (vLLM with NixlConnector and the connectors that share its kv_transfer_params) the
    two-step."""
    if decode.runtime_type is RuntimeType.SGLANG:
        return PdProtocol.SGLANG
    if (decode.kv_connector or "").lower() in _SIDECAR_CONNECTORS:
        return PdProtocol.SIDECAR
    return PdProtocol.NIXL


@dataclass(frozen=True, slots=True)
class SglangPair:
    """The two bodies of an SGLang pair: the same rooms and bootstrap address, rank fields
    each for its own worker."""

    prefill: dict[str, Any]
    decode: dict[str, Any]


def with_bootstrap(data: Mapping[str, Any], prefill: WorkerSpec, decode: WorkerSpec,
                   rng: random.Random) -> SglangPair:
    """One room per prompt of a batch, each a random 63-bit id.

    A data-parallel prefill engine sends a request to rank `room % dp_size` unless told a rank
    (SGLang 0.5.23 srt/managers/data_parallel_controller.py:901-910, follow_bootstrap_room),
    and its decode peer looks for the KV on that rank (srt/disaggregation/decode.py:879-896):
    so the room is drawn to name the prefill rank the picker chose. The rank fields are smg's
    (model_gateway/src/routers/http/pd_router.rs:403-421): `routed_dp_rank` for the prefill
    rank on prefill and the decode rank on decode, `disagg_prefill_dp_rank` on decode; SGLang
    declares them in srt/entrypoints/openai/protocol.py:348-359.
    """
    size = _batch_size(data)
    rank = prefill.dp_rank
    rooms: int | list[int] = _room(prefill, rng, _HTTP_ROOMS) if size is None else [
        _room(prefill, rng, _HTTP_ROOMS) for _ in range(size)]
    host, port = prefill.bootstrap_host, prefill.bootstrap_port
    hosts: str | None | list[str | None] = host if size is None else [host] * size
    ports: int | None | list[int | None] = port if size is None else [port] * size
    body = {**data, "bootstrap_host": hosts, "bootstrap_port": ports, "bootstrap_room": rooms}
    if rank is None:
        return SglangPair(body, body)
    decode_ranks = {} if decode.dp_rank is None else {"routed_dp_rank": decode.dp_rank}
    return SglangPair({**body, "routed_dp_rank": rank},
                      {**body, "disagg_prefill_dp_rank": rank, **decode_ranks})


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A gRPC pair's DisaggregatedParams: the prefill engine's bootstrap server and the room
    the decode engine fetches the prompt's KV from."""

    host: str
    port: int
    room: int


def grpc_bootstrap(prefill: WorkerSpec, rng: random.Random) -> Bootstrap:
    """One room per request, sent to both engines of the pair, as SMG does
    (model_gateway/src/routers/grpc/common/stages/helpers.rs:435-462: one DisaggregatedParams
    from the prefill worker's bootstrap host and port; request_execution.rs:480-502 sends that
    same call to prefill and decode at once). A data-parallel prefill rank is named by the
    room, as over HTTP (SMG pins it with data_parallel_rank instead, which this router's
    Generate call does not carry)."""
    host = prefill.bootstrap_host
    assert host is not None, "WorkerSpec derives bootstrap_host from its url"
    return Bootstrap(host, prefill.bootstrap_port or DEFAULT_BOOTSTRAP_PORT,
                     _room(prefill, rng, _GRPC_ROOMS))


def _room(prefill: WorkerSpec, rng: random.Random, rooms: int) -> int:
    """A random room below `rooms` that names the prefill worker's data-parallel rank, if it
    has one: SGLang sends a request to rank `room % dp_size` unless told a rank (see
    `with_bootstrap`)."""
    drawn = rng.randrange(rooms)
    rank, ranks = prefill.dp_rank, prefill.dp_size or 1
    if rank is None or ranks == 1:
        return drawn
    aligned = drawn - drawn % ranks + rank
    return aligned if aligned < rooms else aligned - ranks


def nixl_prefill_body(data: Mapping[str, Any], api: Api) -> dict[str, Any]:
    """The prefill worker's request in the two-step: one token, not streamed, KV kept for a
    remote decode."""
    body = {key: value for key, value in data.items() if key != "stream_options"}
    body.update(stream=False, kv_transfer_params={
        "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
        "remote_block_ids": None, "remote_host": None, "remote_port": None})
    body.update(dict.fromkeys(_PREFILL_TOKEN_LIMITS.get(api, ("max_tokens",)), 1))
    body.update({key: 1 for key in _PREFILL_LIMITS_IF_SENT if key in body})
    return body


def with_kv_transfer_params(data: Mapping[str, Any],
                            params: Mapping[str, Any]) -> dict[str, Any]:
    """The decode worker's request in the two-step: the client's body plus where the KV is."""
    return {**data, "kv_transfer_params": dict(params)}


def _batch_size(data: Mapping[str, Any]) -> int | None:
    """Prompts in a batched completions request (a list of strings or of token-id lists);
    None for a single prompt (a string, a token-id list, or chat messages)."""
    prompt = data.get("prompt")
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt \
            and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return None
