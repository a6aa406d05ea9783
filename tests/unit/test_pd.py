"""Prefill/decode: the protocols' body rewrites (pure) and which router a request gets."""

from __future__ import annotations

import random
from typing import Any

import pytest

from picker.config import PickerConfig, load_config
from picker.errors import ConfigError, ModelNotFound, NoHealthyWorker
from picker.fleet.worker_spec import WorkerSpec
from picker.grpc_route.transcoder import TokenizerUnavailable
from picker.pd.protocols import (
    PREFILLER_HEADER,
    Bootstrap,
    PdProtocol,
    grpc_bootstrap,
    nixl_prefill_body,
    protocol_of,
    with_bootstrap,
    with_kv_transfer_params,
)
from picker.routing.request import Api, RoutingRequest
from picker.runtime import Host, PickerRuntime


@pytest.mark.parametrize(("prompt", "rooms"), [
    ("one prompt", None), ([1, 2, 3], None), (["a", "b", "c"], 3), ([[1, 2], [3]], 2)])
def test_bootstrap_rooms_one_per_prompt(prompt: Any, rooms: int | None) -> None:
    prefill = WorkerSpec.model_validate({"url": "http://10.0.0.1:8000",
                                         "bootstrap_port": 8998})
    decode = WorkerSpec.model_validate({"url": "http://10.0.0.2:8000"})
    pair = with_bootstrap({"model": "m", "prompt": prompt}, prefill, decode, random.Random(1))
    body = pair.decode
    assert pair.prefill == body  # no ranks: both workers get one body
    assert body["prompt"] == prompt and body["model"] == "m"
    if rooms is None:
        assert isinstance(body["bootstrap_room"], int) and 0 <= body["bootstrap_room"] < 2**63
        assert body["bootstrap_host"] == "10.0.0.1" and body["bootstrap_port"] == 8998
    else:
        assert len(set(body["bootstrap_room"])) == rooms
        assert body["bootstrap_host"] == ["10.0.0.1"] * rooms
        assert body["bootstrap_port"] == [8998] * rooms


@pytest.mark.parametrize(("fields", "port"), [({"bootstrap_port": 9000}, 9000), ({}, 8998)])
def test_a_grpc_pair_gets_an_int32_room_and_the_prefill_bootstrap_server(
        fields: dict[str, Any], port: int) -> None:
    """DisaggregatedParams.bootstrap_room is an int32 (sglang_scheduler.proto:117), drawn as SMG
    draws it (helpers.rs:442); a prefill worker naming no port gets SGLang's default, 8998
    (SMG worker.rs:71)."""
    prefill = WorkerSpec.model_validate({"url": "grpc://10.0.0.1:30000", **fields})
    drawn = [grpc_bootstrap(prefill, random.Random(seed)) for seed in range(200)]
    assert all(b.host == "10.0.0.1" and b.port == port and 0 <= b.room < 2**31 - 1
               for b in drawn)
    assert len({b.room for b in drawn}) == 200
    ranked = WorkerSpec.model_validate({"url": "grpc://10.0.0.1:30000@2", "dp_size": 3})
    assert {grpc_bootstrap(ranked, random.Random(s)).room % 3 for s in range(50)} == {2}
    assert isinstance(drawn[0], Bootstrap)


@pytest.mark.parametrize("rank", [0, 1, 6])
@pytest.mark.parametrize("prompt", ["one prompt", ["a", "b", "c"]])
def test_sglang_data_parallel_rooms_name_the_prefill_rank(rank: int, prompt: Any) -> None:
    """SGLang sends a prefill to rank `room % dp_size` (data_parallel_controller.py,
    follow_bootstrap_room_scheduler) and its decode looks there (decode.py,
    _resolve_prefill_dp_rank); smg's rank fields say it too (pd_router.rs:403-421)."""
    prefill = WorkerSpec.model_validate({"url": "http://10.0.0.1:8000@" + str(rank),
                                         "dp_size": 7, "bootstrap_port": 8998})
    decode = WorkerSpec.model_validate({"url": "http://10.0.0.2:8000@2", "dp_size": 4})
    for seed in range(50):
        pair = with_bootstrap({"model": "m", "prompt": prompt}, prefill, decode,
                              random.Random(seed))
        rooms = pair.prefill["bootstrap_room"]
        assert pair.decode["bootstrap_room"] == rooms
        for room in rooms if isinstance(rooms, list) else [rooms]:
            assert 0 <= room < 2**63 and room % 7 == rank
        assert pair.prefill["routed_dp_rank"] == rank
        assert "disagg_prefill_dp_rank" not in pair.prefill
        assert pair.decode["disagg_prefill_dp_rank"] == rank
        assert pair.decode["routed_dp_rank"] == 2
    # SGLang's own request model declares the fields (0.5.23 srt/entrypoints/openai/
    # protocol.py:348-359, PDRoutingFields), so the engine reads, not drops, them.
    assert {"bootstrap_host", "bootstrap_port", "bootstrap_room", "routed_dp_rank",
            "disagg_prefill_dp_rank"} >= set(pair.decode) - {"model", "prompt"}


# vLLM 0.33.0's request models: the output-token limit each API declares
# (chat_completion/protocol.py:244-249 max_tokens, max_completion_tokens, :295 min_tokens;
# completion/protocol.py:64 max_tokens, :86 min_tokens; responses/protocol.py:273
# max_output_tokens, the only one /v1/responses reads).
@pytest.mark.parametrize(("api", "client", "capped"), [
    (Api.CHAT, {"max_tokens": 99, "max_completion_tokens": 99, "min_tokens": 5},
     {"max_tokens": 1, "max_completion_tokens": 1, "min_tokens": 1}),
    (Api.CHAT, {"max_completion_tokens": 99},
     {"max_tokens": 1, "max_completion_tokens": 1, "min_tokens": 1}),
    (Api.COMPLETIONS, {"max_tokens": 99, "min_tokens": 40}, {"max_tokens": 1, "min_tokens": 1}),
    (Api.RESPONSES, {"max_output_tokens": 500}, {"max_output_tokens": 1}),
    (Api.RESPONSES, {}, {"max_output_tokens": 1}),
])
def test_the_prefill_leg_is_capped_at_one_token_in_each_apis_own_field(
        api: Api, client: dict[str, Any], capped: dict[str, int]) -> None:
    prefill = nixl_prefill_body({"model": "m", **client}, api)
    limits = {"max_tokens", "max_completion_tokens", "min_tokens", "max_output_tokens"}
    assert {k: v for k, v in prefill.items() if k in limits} == capped
    assert prefill["min_tokens" if "min_tokens" in capped else "max_output_tokens"] <= 1


def test_nixl_two_step_bodies() -> None:
    client = {"model": "m", "messages": [], "stream": True, "max_tokens": 99,
              "max_completion_tokens": 99, "stream_options": {"include_usage": True}}
    prefill = nixl_prefill_body(client, Api.CHAT)
    assert prefill["stream"] is False and prefill["max_tokens"] == 1
    assert prefill["max_completion_tokens"] == 1 and "stream_options" not in prefill
    assert prefill["kv_transfer_params"]["do_remote_decode"] is True
    assert client["max_tokens"] == 99  # the client's body is not changed in place
    params = {"do_remote_prefill": True, "remote_host": "h", "remote_port": 1}
    assert with_kv_transfer_params(client, params) == {**client, "kv_transfer_params": params}


@pytest.mark.parametrize(("fields", "protocol"), [
    ({"runtime_type": "sglang"}, PdProtocol.SGLANG),
    ({"runtime_type": "vllm", "kv_connector": "NixlConnector"}, PdProtocol.NIXL),
    ({"runtime_type": "vllm"}, PdProtocol.NIXL),
    ({"runtime_type": "vllm", "kv_connector": "llm-d"}, PdProtocol.SIDECAR),
])
def test_protocol_follows_the_decode_worker(fields: dict[str, str],
                                            protocol: PdProtocol) -> None:
    assert protocol_of(WorkerSpec.model_validate({"url": "a:1", **fields})) is protocol


def runtime(*workers: dict[str, Any]) -> PickerRuntime:
    """Sidecar-style pairs need no prefill request: selection runs without engines."""
    return PickerRuntime(PickerConfig.model_validate({"enable_igw": True, "workers": [
        {"models": ["m"], "kv_connector": "llm-d", **w} for w in workers]}))


REQ = RoutingRequest(model="m", api=Api.CHAT)
REGULAR = {"url": "r:1", "id": "r"}
PREFILL = {"url": "p:1", "id": "p", "worker_type": "prefill"}
DECODE = {"url": "d:1", "id": "d", "worker_type": "decode"}


async def test_a_model_with_only_regular_workers_goes_regular() -> None:
    lease = await runtime(REGULAR).routing.route(REQ)
    assert lease.worker.id == "r" and lease.prefill is None and lease.forward is None


async def test_an_incomplete_pd_set_falls_back_to_regular() -> None:
    lease = await runtime(REGULAR, DECODE).routing.route(REQ)
    assert lease.worker.id == "r" and lease.prefill is None


async def test_a_regular_requests_fallbacks_are_regular_workers_only() -> None:
    """Issue 34: the fallbacks came from the default router (every worker), not from the
    regular router that chose, so Envoy could retry a regular request on a decode engine."""
    other = {"url": "r2:1", "id": "r2"}
    lease = await runtime(REGULAR, other, DECODE).routing.route(REQ, fallbacks=3)
    assert {lease.worker.id, *(w.id for w in lease.fallbacks)} == {"r", "r2"}
    assert "d:1" not in lease.destination


async def test_a_pair_has_no_fallbacks() -> None:
    """A pair is bound to its decode worker: nothing else can take its request over."""
    lease = await runtime(PREFILL, DECODE, {"url": "d2:1", "id": "d2",
                                            "worker_type": "decode"}).routing.route(
        REQ, fallbacks=2)
    assert lease.prefill is not None and lease.fallbacks == ()


async def test_a_complete_pd_set_is_preferred_and_holds_both_slots() -> None:
    r = runtime(REGULAR, PREFILL, DECODE)
    lease = await r.routing.route(REQ)
    assert (lease.worker.id, lease.prefill and lease.prefill.id) == ("d", "p")
    assert lease.forward is not None and lease.forward.headers == ((PREFILLER_HEADER, "p:1"),)
    assert {w.id: w.in_flight for w in r.registry.workers()} == {"r": 0, "p": 1, "d": 1}
    lease.release("completed")
    assert all(w.in_flight == 0 for w in r.registry.workers()) and r.leases.active == 0


async def test_a_failed_pair_is_the_decode_engines_failure() -> None:
    """The upstream error Envoy reports is the served (decode) engine's: a dead decode engine
    must not open the circuit of the healthy prefill it was paired with."""
    r = runtime(PREFILL, DECODE)
    for _ in range(3):  # circuit.failure_threshold
        (await r.routing.route(REQ)).release("upstream_error")
    circuits = {w.id: w.circuit.state.value for w in r.registry.workers()}
    assert circuits == {"p": "closed", "d": "open"}


async def test_an_unhealthy_prefill_breaks_the_pair() -> None:
    r = runtime(REGULAR, PREFILL, DECODE)
    r.registry.set_healthy(r.registry.get("p"), False)  # type: ignore[arg-type]
    assert (await r.routing.route(REQ)).worker.id == "r"


async def test_no_regular_and_no_complete_pair_is_a_503_naming_what_is_missing() -> None:
    r = runtime(DECODE)
    with pytest.raises(NoHealthyWorker) as caught:
        await r.routing.route(REQ)
    assert "'m'" in caught.value.message and "prefill: 0 routable of 0" in caught.value.message
    assert r.leases.active == 0
    with pytest.raises(ModelNotFound):
        await r.routing.route(RoutingRequest(model="other", api=Api.CHAT))


async def test_a_grpc_only_model_goes_to_its_grpc_worker() -> None:
    """It was a 503 naming the connection mode until the gRPC router existed (issue 25): the
    request now reaches the gRPC router, whose worker here lacks the tokenizer the transcoder
    needs - a 503 naming that instead."""
    r = runtime({**REGULAR, "url": "grpc://r:1", "connection_mode": "grpc"})
    with pytest.raises(TokenizerUnavailable, match="tokenizer_path"):
        await r.routing.route(REQ)


def test_igw_off_keeps_one_router_over_every_worker() -> None:
    r = PickerRuntime(PickerConfig.model_validate({"workers": [
        {**DECODE, "models": ["m"]}, {**PREFILL, "models": ["m"]}]}))
    assert [v["router"] for v in r.routers.describe()] == ["http-regular"]
    assert r.routing.route_sync(REQ).prefill is None


def test_pd_policies_are_checked_at_start_up() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"enable_igw": True, "pd": {"prefill_policy": "prefix_cache"}})
    assert caught.value.key == "prefix.enabled" and "pd.prefill_policy" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"enable_igw": True, "pd": {"decode_policy": {
            "name": "least_load", "params": {"sed": 1}}}})
    assert caught.value.key == "pd.decode_policy.params.sed"


def test_litellm_mode_refuses_igw() -> None:
    with pytest.raises(ConfigError) as caught:
        PickerRuntime(PickerConfig(enable_igw=True), Host.LITELLM)
    assert caught.value.key == "enable_igw"


async def test_a_client_gone_during_the_prefill_step_leaks_no_slot() -> None:
    """NIXL two-step: the prefill worker accepts and never answers, the client goes away
    (the route is cancelled); both workers' slots and the admission slot come back."""
    import asyncio

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = PickerRuntime(PickerConfig.model_validate({"enable_igw": True, "workers": [
            {"url": f"127.0.0.1:{port}", "id": "p", "models": ["m"], "worker_type": "prefill"},
            {"url": "d:1", "id": "d", "models": ["m"], "worker_type": "decode"}]}))
        routing = asyncio.create_task(r.routing.route(RoutingRequest(
            model="m", api=Api.CHAT, body={"model": "m", "messages": []})))
        await asyncio.sleep(0.3)
        assert r.leases.active == 1
        routing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await routing
        assert r.leases.active == 0
        assert all(w.in_flight == 0 for w in r.registry.workers())
    finally:
        server.close()
