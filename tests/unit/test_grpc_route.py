"""picker.grpc_route on its own: the Generate messages of both engines (SGLang's, vLLM's)
against smg-grpc-proto's classes byte for byte, the calls each engine's adapter writes, the
answer rebuilt from framed pieces, and routing that keeps a request within one connection
mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2 as upstream
from smg_grpc_proto.generated import vllm_engine_pb2 as upstream_vllm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from extproc._pb import ext_proc_pb2 as ext_pb
from extproc.stream import RequestStream
from picker.config import PickerConfig
from picker.errors import InvalidRequest
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import ConnectionMode, RuntimeType, WorkerSpec
from picker.grpc_route._pb import generate_pb2 as pb
from picker.grpc_route._pb import vllm_generate_pb2 as vpb
from picker.grpc_route.answer import OpenAIAnswer
from picker.grpc_route.engines import ENGINES, UnservedRuntime, engine_for
from picker.grpc_route.framing import FrameReader, frame
from picker.grpc_route.request import generate_call
from picker.grpc_route.stops import StopStrings
from picker.observe.metrics import PickerMetrics
from picker.pd.protocols import Bootstrap
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.router import Router
from picker.routing.router_manager import RouterManager
from picker.runtime import PickerRuntime
from picker.tokens import load_tokenizer
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.unit.test_extproc_response import duplex_both_ways, response_body, response_headers
from tests.unit.test_extproc_stream import body_msg, headers_msg

# Every field of each message the picker's proto holds, set to a value that is not its default.
MESSAGES: list[tuple[Any, Any, dict[str, Any]]] = [
    (pb.GenerateRequest, upstream.GenerateRequest, {
        "request_id": "r1", "stream": True,
        "tokenized": {"original_text": "hi", "input_ids": [1, 2, 300000]},
        "sampling_params": {"temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.1,
                            "frequency_penalty": 0.2, "presence_penalty": 0.3,
                            "repetition_penalty": 1.1, "max_new_tokens": 0, "stop": ["x", "y"],
                            "stop_token_ids": [7], "skip_special_tokens": True,
                            "spaces_between_special_tokens": True, "n": 1, "ignore_eos": True},
        "disaggregated_params": {"bootstrap_host": "10.0.0.1", "bootstrap_port": 8998,
                                 "bootstrap_room": 2**31 - 2}}),
    (pb.DisaggregatedParams, upstream.DisaggregatedParams, {
        "bootstrap_host": "h", "bootstrap_port": 1, "bootstrap_room": 0}),
    (pb.GenerateResponse, upstream.GenerateResponse, {
        "request_id": "r1", "chunk": {"token_ids": [5, 6], "prompt_tokens": 3,
                                      "completion_tokens": 2, "cached_tokens": 1}}),
    (pb.GenerateResponse, upstream.GenerateResponse, {
        "request_id": "r1", "complete": {"output_ids": [9], "finish_reason": "stop",
                                         "prompt_tokens": 3, "completion_tokens": 4,
                                         "cached_tokens": 2, "matched_stop_str": "###"}}),
    (pb.GenerateComplete, upstream.GenerateComplete, {"matched_token_id": 2}),
    (pb.AbortRequest, upstream.AbortRequest, {"request_id": "r1", "reason": "client gone"}),
    # vLLM's service (vllm_engine.proto): other numbers for the same names.
    (vpb.GenerateRequest, upstream_vllm.GenerateRequest, {
        "request_id": "r1", "stream": True,
        "tokenized": {"original_text": "hi", "input_ids": [1, 2, 300000]},
        "sampling_params": {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.1,
                            "frequency_penalty": 0.2, "presence_penalty": 0.3,
                            "repetition_penalty": 1.1, "max_tokens": 0, "stop": ["x", "y"],
                            "stop_token_ids": [7], "skip_special_tokens": True,
                            "spaces_between_special_tokens": True, "ignore_eos": True, "n": 1}}),
    (vpb.GenerateResponse, upstream_vllm.GenerateResponse, {
        "chunk": {"token_ids": [5, 6], "prompt_tokens": 3, "completion_tokens": 2,
                  "cached_tokens": 1}}),
    (vpb.GenerateResponse, upstream_vllm.GenerateResponse, {
        "complete": {"output_ids": [9], "finish_reason": "stop", "prompt_tokens": 3,
                     "completion_tokens": 4, "cached_tokens": 2, "matched_stop_str": "###"}}),
    (vpb.GenerateComplete, upstream_vllm.GenerateComplete, {"matched_token_id": 2}),
    (vpb.AbortRequest, upstream_vllm.AbortRequest, {"request_ids": ["r1", "r2"]}),
]


@pytest.mark.parametrize(("ours", "theirs", "fields"), MESSAGES)
def test_messages_round_trip_byte_for_byte_with_smg_grpc_proto(
        ours: Any, theirs: Any, fields: dict[str, Any]) -> None:
    from google.protobuf import json_format

    mine = json_format.ParseDict(fields, ours())
    upstream_message = json_format.ParseDict(fields, theirs())
    assert mine.SerializeToString(deterministic=True) == \
        upstream_message.SerializeToString(deterministic=True)
    assert theirs.FromString(mine.SerializeToString()) == upstream_message
    assert ours.FromString(upstream_message.SerializeToString()) == mine


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen", "qwen2.5")


def sglang_call(body: dict[str, Any], tokenizer: Any, stream: bool = False,
                bootstrap: Bootstrap | None = None) -> Any:
    """SGLang's GenerateRequest for `body`, as the engine reads it."""
    call = generate_call(body, Api.CHAT, tokenizer, "rid", stream, bootstrap)
    return upstream.GenerateRequest.FromString(ENGINES[RuntimeType.SGLANG].request(call))


def test_the_generate_call_carries_the_engines_token_ids_and_sampling(
        tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir))
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 9, "stop": "END", "temperature": 0.0}
    call = sglang_call(body, tokenizer)
    assert list(call.tokenized.input_ids) == tokenizer.body_ids(body)
    params = call.sampling_params
    assert (params.max_new_tokens, list(params.stop), params.temperature, params.top_k,
            params.top_p, params.repetition_penalty) == (9, ["END"], 0.0, -1, 1.0, 1.0)
    unbounded = sglang_call({**body, "max_tokens": None}, tokenizer)
    assert not unbounded.sampling_params.HasField("max_new_tokens")
    assert not call.HasField("disaggregated_params")  # a regular worker's call


def test_vllms_call_has_its_numbers_and_smgs_defaults(tokenizer_dir: Path) -> None:
    """vLLM's GenerateRequest, read by vLLM's generated class: the same ids, max_tokens at
    its own field, temperature unset unless asked, top_k 0 ("disabled") for -1 or none."""
    tokenizer = load_tokenizer(str(tokenizer_dir))
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 9, "stop": ["END"], "top_k": -1}
    engine = ENGINES[RuntimeType.VLLM]
    call = upstream_vllm.GenerateRequest.FromString(
        engine.request(generate_call(body, Api.CHAT, tokenizer, "rid", True)))
    assert (call.request_id, call.stream, call.WhichOneof("input")) == ("rid", True, "tokenized")
    assert list(call.tokenized.input_ids) == tokenizer.body_ids(body)
    params = call.sampling_params
    assert not params.HasField("temperature")
    assert (params.max_tokens, list(params.stop), params.top_k, params.top_p,
            params.repetition_penalty, params.skip_special_tokens, params.n) == (
        9, ["END"], 0, 1.0, 1.0, True, 1)
    hot = upstream_vllm.GenerateRequest.FromString(engine.request(generate_call(
        {**body, "temperature": 0.0, "top_k": 5, "max_tokens": None}, Api.CHAT, tokenizer,
        "r", False)))
    assert hot.sampling_params.HasField("temperature") and hot.sampling_params.top_k == 5
    assert not hot.sampling_params.HasField("max_tokens")
    assert engine.generate_path == "/vllm.grpc.engine.VllmEngine/Generate"
    assert upstream_vllm.AbortRequest.FromString(engine.abort("rid", "gone")).request_ids == \
        ["rid"]


def test_a_runtime_without_a_served_generate_is_a_503() -> None:
    spec = WorkerSpec(url="grpc://h:1", id="t", models=["m"], runtime_type=RuntimeType.TRTLLM,
                      connection_mode=ConnectionMode.GRPC)
    with pytest.raises(UnservedRuntime, match="runtime_type trtllm") as caught:
        engine_for(spec)
    assert caught.value.status == 503


def test_a_pairs_call_carries_its_disaggregated_params(tokenizer_dir: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    theirs = sglang_call(body, load_tokenizer(str(tokenizer_dir)), True,
                         Bootstrap("10.0.0.1", 8998, 12345))
    assert (theirs.disaggregated_params.bootstrap_host, theirs.disaggregated_params.bootstrap_port,
            theirs.disaggregated_params.bootstrap_room) == ("10.0.0.1", 8998, 12345)


@pytest.mark.parametrize(("field", "value"), [
    ("stop", 5), ("n", 3), ("logprobs", True), ("max_tokens", 0), ("temperature", "hot"),
    ("response_format", {"type": "json_object"}), ("top_k", 1.5)])
def test_what_the_call_cannot_carry_is_a_400_naming_the_field(
        tokenizer_dir: Path, field: str, value: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], field: value}
    with pytest.raises(InvalidRequest) as caught:
        generate_call(body, Api.CHAT, load_tokenizer(str(tokenizer_dir)), "r", False)
    assert field in caught.value.message


def byte_level_tokenizer(directory: Path) -> Tokenizer:
    """Byte-level BPE with no merges for é: 'é' is two tokens, neither text alone."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(["plain words only"], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    return tokenizer


def answer_for(directory: Path, stream: bool, api: Api = Api.CHAT,
               runtime: RuntimeType = RuntimeType.SGLANG) -> OpenAIAnswer:
    return OpenAIAnswer(ENGINES[runtime], load_tokenizer(str(directory)).detokenizer(), api, "m",
                        "rid", stream, usage_chunk=True)


def test_a_character_split_over_tokens_and_frames_comes_out_whole(tmp_path: Path) -> None:
    raw = byte_level_tokenizer(tmp_path / "bytes")
    text = "café ☕ done"
    ids = raw.encode(text).ids
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    wire = b"".join(frame(pb.GenerateResponse(chunk=pb.GenerateStreamChunk(
        token_ids=[token], prompt_tokens=4, completion_tokens=i + 1, cached_tokens=2)
    ).SerializeToString()) for i, token in enumerate(ids))
    wire += frame(pb.GenerateResponse(complete=pb.GenerateComplete(
        output_ids=ids[-1:], finish_reason="stop", prompt_tokens=4,
        completion_tokens=len(ids), cached_tokens=2)).SerializeToString())
    answer = answer_for(tmp_path / "bytes", stream=True)
    out = b"".join(answer.feed(wire[i:i + 3]) for i in range(0, len(wire), 3))
    assert answer.complete and answer.end(0, "") == b""
    events = [line[6:] for line in out.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": len(ids),
                                   "total_tokens": 4 + len(ids),
                                   "prompt_tokens_details": {"cached_tokens": 2}}


def test_a_failed_or_cut_stream_is_an_openai_error(tmp_path: Path) -> None:
    byte_level_tokenizer(tmp_path / "bytes")
    answer = answer_for(tmp_path / "bytes", stream=False)
    error = json.loads(answer.end(8, "queue full"))["error"]
    assert (error["code"], error["type"]) == (429, "invalid_request_error")
    assert "queue full" in error["message"]
    cut = answer_for(tmp_path / "bytes", stream=True)
    assert cut.end(0, "").startswith(b'data: {"error"')
    garbled = answer_for(tmp_path / "bytes", stream=False)
    assert b"could not be read" in garbled.feed(b"\x01\x00\x00\x00\x01x")  # compressed flag


def test_frames_split_anywhere_are_reassembled() -> None:
    wire = frame(b"abc") + frame(b"") + frame(b"x" * 70000)
    reader = FrameReader()
    got = [m for i in range(0, len(wire), 7) for m in reader.feed(wire[i:i + 7])]
    assert got == [b"abc", b"", b"x" * 70000] and not reader.partial


def mixed_specs(tokenizer_dir: Path) -> list[WorkerSpec]:
    http = [WorkerSpec(url=f"http://h{i}:1", id=f"h{i}", models=["m"]) for i in range(2)]
    grpc = [WorkerSpec(url=f"grpc://g{i}:1", id=f"g{i}", models=["m"],
                       connection_mode=ConnectionMode.GRPC, tokenizer_path=str(tokenizer_dir))
            for i in range(2)]
    return [*http, *grpc]


def test_fallbacks_stay_within_the_chosen_workers_connection_mode(tokenizer_dir: Path) -> None:
    runtime = PickerRuntime(PickerConfig.model_validate({
        "workers": mixed_specs(tokenizer_dir), "policy": "round_robin"}))
    request = RoutingRequest(model="m", api=Api.CHAT, body={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    modes = set()
    for _ in range(4):
        lease = runtime.routing.route_sync(request, fallbacks=3)
        mode = lease.worker.spec.connection_mode
        modes.add(mode)
        assert [w.spec.connection_mode for w in lease.fallbacks] == [mode]
        assert (lease.transcoder is not None) is (mode is ConnectionMode.GRPC)
        lease.release(Outcome.COMPLETED)
    assert modes == {ConnectionMode.HTTP, ConnectionMode.GRPC}


def test_with_igw_a_model_on_both_modes_goes_to_the_less_loaded_router(
        tokenizer_dir: Path) -> None:
    workers = WorkerRegistry(mixed_specs(tokenizer_dir))
    config = PickerConfig.model_validate({"policy": {"name": "round_robin"}, "enable_igw": True})
    routers = RouterManager(workers, config, PickerMetrics(workers), None, None)
    request = RoutingRequest(model="m", api=Api.CHAT)
    http = routers.select(request)  # a tie: HTTP
    workers.acquire(workers.get("h0"))  # type: ignore[arg-type]
    grpc = routers.select(request)
    assert grpc is not http
    assert isinstance(grpc, Router) and grpc.choose(request).worker.id in {"g0", "g1"}
    assert routers.select(request, ConnectionMode.HTTP) is http


def grpc_runtime(tokenizer_dir: Path,
                 runtime: RuntimeType = RuntimeType.SGLANG) -> PickerRuntime:
    return PickerRuntime(PickerConfig.model_validate({"workers": [WorkerSpec(
        url="grpc://127.0.0.1:9100", models=["m"], connection_mode=ConnectionMode.GRPC,
        runtime_type=runtime, tokenizer_path=str(tokenizer_dir))]}))


def stream_body(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}],
                       "stream": True, "max_tokens": 5}).encode()


def test_a_grpc_worker_behind_an_envoy_that_hides_the_response_is_a_clear_500(
        tokenizer_dir: Path) -> None:
    stream = RequestStream(grpc_runtime(tokenizer_dir).routing, 1 << 20)
    assert stream.handle(headers_msg()) == []  # duplex request, response body NONE
    [reply] = stream.handle(body_msg(stream_body("hi"), True))
    assert reply.immediate_response.status.code == 500
    assert b"response_body_mode must be FULL_DUPLEX_STREAMED" in reply.immediate_response.body


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_no_grpc_trailers(
        tokenizer_dir: Path) -> None:
    runtime = grpc_runtime(tokenizer_dir)
    stream = RequestStream(runtime.routing, 1 << 20)
    assert stream.handle(duplex_both_ways()) == []
    routed = stream.handle(body_msg(stream_body("hi"), True))
    headers = {o.header.key: o.header.raw_value.decode()
               for o in routed[0].request_headers.response.header_mutation.set_headers}
    assert headers[":path"] == "/sglang.grpc.scheduler.SglangScheduler/Generate"
    assert headers["content-type"] == "application/grpc"
    [answer] = stream.handle(response_headers(content_type="application/grpc"))
    assert {o.header.key: o.header.raw_value.decode() for o in
            answer.response_headers.response.header_mutation.set_headers}[
        "content-type"] == "text/event-stream"
    piece = frame(pb.GenerateResponse(chunk=pb.GenerateStreamChunk(
        token_ids=[5], prompt_tokens=3, completion_tokens=1)).SerializeToString())
    [first] = stream.handle(response_body(piece, False))
    assert first.response_body.response.body_mutation.streamed_response.body.startswith(
        b'data: {"id"')
    trailers = ext_pb.ProcessingRequest()
    for key, value in (("grpc-status", "14"), ("grpc-message", "engine%20restarting")):
        header = trailers.response_trailers.trailers.headers.add()
        header.key, header.raw_value = key, value.encode()
    error, end = stream.handle(trailers)
    sent = error.response_body.response.body_mutation.streamed_response.body
    assert sent.startswith(b'data: {"error"') and b"engine restarting" in sent
    assert sent.endswith(b"data: [DONE]\n\n")
    assert "grpc-status" in end.response_trailers.header_mutation.remove_headers
    assert [w.in_flight for w in runtime.registry.workers()] == [0]
    assert stream.abandoned_generation is None  # the engine said it is over: no Abort


@pytest.mark.parametrize(("pieces", "stops", "sent", "stopped"), [
    (["the qu", "ick fox"], ["quick"], "the ", True),
    (["abc", "de"], ["xyz"], "abcde", False),
    (["ab", "c"], ["bcd"], "a", False),  # "bc" held: it may start "bcd"
    (["say ##", "#END"], ["###", "END"], "say ", True),
    (["café", "!"], [], "café!", False),
])
def test_stop_strings_end_the_text_before_them(pieces: list[str], stops: list[str], sent: str,
                                               stopped: bool) -> None:
    matcher = StopStrings(stops)
    out, ended = "", False
    for piece in pieces:
        text, ended = matcher.feed(piece)
        out += text
        if ended:
            break
    assert (out, ended) == (sent, stopped)


@pytest.mark.parametrize("stream", [False, True])
def test_vllms_answer_adds_up_its_chunks_counts(tmp_path: Path, stream: bool) -> None:
    """vLLM's chunks count their own tokens and a streamed GenerateComplete its last delta
    (smg_grpc_servicer vllm/servicer.py `_chunk_response`, `_complete_response`): usage is
    their sum; unstreamed, the GenerateComplete counts everything."""
    raw = byte_level_tokenizer(tmp_path / "bytes")
    ids = raw.encode("plain words").ids
    wire = b""
    if stream:
        wire = b"".join(frame(vpb.GenerateResponse(chunk=vpb.GenerateStreamChunk(
            token_ids=[token], prompt_tokens=4, completion_tokens=1, cached_tokens=2)
        ).SerializeToString()) for token in ids)
    wire += frame(vpb.GenerateResponse(complete=vpb.GenerateComplete(
        output_ids=ids[-1:] if stream else ids, finish_reason="length", prompt_tokens=4,
        completion_tokens=1 if stream else len(ids), cached_tokens=2)).SerializeToString())
    answer = answer_for(tmp_path / "bytes", stream, runtime=RuntimeType.VLLM)
    out = answer.feed(wire)
    assert answer.complete
    if stream:
        chunks = [json.loads(line[6:]) for line in out.decode().split("\n")
                  if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        usage = chunks[-1]["usage"]
    else:
        document = json.loads(out)
        text, usage = document["choices"][0]["message"]["content"], document["usage"]
    assert text == "plain words"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (4, len(ids))


def test_a_vllm_worker_gets_vllms_generate_path_and_abort(tokenizer_dir: Path) -> None:
    """A request routed to a vLLM gRPC worker is rewritten into vLLM's Generate call; a
    client that leaves mid-stream leaves vLLM's Abort to send."""
    runtime = grpc_runtime(tokenizer_dir, RuntimeType.VLLM)
    stream = RequestStream(runtime.routing, 1 << 20)
    assert stream.handle(duplex_both_ways()) == []
    routed = stream.handle(body_msg(stream_body("hi"), True))
    headers = {o.header.key: o.header.raw_value.decode()
               for o in routed[0].request_headers.response.header_mutation.set_headers}
    assert headers[":path"] == "/vllm.grpc.engine.VllmEngine/Generate"
    sent = routed[1].request_body.response.body_mutation.streamed_response.body
    call = upstream_vllm.GenerateRequest.FromString(sent[5:])
    assert call.stream and call.sampling_params.max_tokens == 5
    stream.handle(response_headers(content_type="application/grpc"))
    stream.handle(response_body(frame(vpb.GenerateResponse(chunk=vpb.GenerateStreamChunk(
        token_ids=[5], prompt_tokens=3, completion_tokens=1)).SerializeToString()), False))
    stream.close(cancelled=True)
    abandoned = stream.abandoned_generation
    assert abandoned is not None and abandoned[0] == "127.0.0.1:9100"
    assert abandoned[1].path == "/vllm.grpc.engine.VllmEngine/Abort"
    assert upstream_vllm.AbortRequest.FromString(abandoned[1].message).request_ids == \
        [call.request_id]
