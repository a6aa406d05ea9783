"""vLLM's gRPC service (`vllm.grpc.engine.VllmEngine`): the simulator's vLLM face through
smg-grpc-proto's stubs, the picker's gRPC router to it through real Envoy (gateway
configuration), and the real SMG gateway against the same sim."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from smg_grpc_proto.generated import vllm_engine_pb2 as pb
from tokenizers import Tokenizer

from picker.tokens import load_tokenizer
from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_GATEWAY, Fleet, SimSpec, local_fleet, start_sims
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from picker_sim.engine import WORDS
from tests.integration.conftest import FAST_HEALTH, MODEL
from tests.integration.test_grpc_route import (
    MESSAGES,
    events,
    expected_text,
    grpc_sim,
    post,
)
from tests.integration.test_grpc_sim import (
    PROMPT_WORDS,
    post_until_served,
    smg_gateway,
    write_tokenizer,
)
from tests.integration.test_grpc_sim import grpc_sim as served_sim
from tests.waiting import wait_until


def generate(ids: list[int], max_tokens: int, stream: bool, rid: str = "r1") -> Any:
    return pb.GenerateRequest(request_id=rid, tokenized=pb.TokenizedInput(input_ids=ids),
                              sampling_params=pb.SamplingParams(max_tokens=max_tokens),
                              stream=stream)


async def test_the_sim_answers_in_vllms_messages(tmp_path: Path) -> None:
    """Streamed: a chunk per token counting only itself, then a GenerateComplete repeating the
    last delta (smg_grpc_servicer vllm/servicer.py); unstreamed: every id at once; cache,
    Abort by ids, and the server facts a gateway reads, all in vLLM's messages."""
    async with served_sim(tmp_path, "vllm", block_tokens=4) as sim:
        tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
        ids = tokenizer.encode(" ".join(PROMPT_WORDS)).ids
        streamed = [m async for m in sim.Generate(generate(ids, 3, stream=True))]
        assert [m.WhichOneof("response") for m in streamed] == ["chunk"] * 3 + ["complete"]
        out = [i for m in streamed[:3] for i in m.chunk.token_ids]
        assert tokenizer.decode(out) == "the quick brown"
        assert [m.chunk.completion_tokens for m in streamed[:3]] == [1, 1, 1]  # deltas
        done = streamed[-1].complete
        assert (list(done.output_ids), done.finish_reason, done.completion_tokens) == (
            out[-1:], "length", 1)
        [again] = [m async for m in sim.Generate(generate(ids, 2, stream=False, rid="r2"))]
        assert (list(again.complete.output_ids), again.complete.completion_tokens) == (out[:2], 2)
        assert (again.complete.prompt_tokens, again.complete.cached_tokens) == (len(ids), 8)
        call = sim.Generate(generate([5, 6, 7], 500, stream=True, rid="long"))
        received = []
        async for message in call:
            received.append(message)
            if len(received) == 2:
                await sim.Abort(pb.AbortRequest(request_ids=["long"]))
        assert len(received) < 10 and await call.code() == grpc.StatusCode.OK
        server = await sim.GetServerInfo(pb.GetServerInfoRequest())
        assert (server.server_type, server.block_size) == ("vllm-grpc", 4)
        loads = await sim.GetLoads(pb.GetLoadsRequest(include=["core"]))
        assert loads.dp_rank_count == 1 and loads.loads[0].num_running_reqs == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [m async for m in sim.Generate(generate([5], 0, stream=False))]
        assert "max_tokens" in (caught.value.details() or "")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama", "llama-3.1")


@pytest.fixture(scope="module")
def fleet(tokenizer_dir: Path) -> Iterator[Fleet]:
    """One vLLM gRPC sim behind Envoy (both bodies FULL_DUPLEX_STREAMED)."""
    with local_fleet([grpc_sim("v1", tokenizer_dir, runtime="vllm")], policy="round_robin",
                     body_mode="FULL_DUPLEX_STREAMED", envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH}) as fleet:
        yield fleet


def prompt_tokens(directory: Path, body: dict[str, Any]) -> int:
    return len(load_tokenizer(str(directory)).body_ids(body))


def test_chat_streamed_and_not_with_text_finish_reason_and_usage(
        fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 7}
    answer = post(fleet, "/v1/chat/completions", body).json()
    prompt = prompt_tokens(tokenizer_dir, body)
    assert answer["choices"][0]["message"] == {"role": "assistant",
                                               "content": expected_text(tokenizer_dir, 7)}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (prompt, 7)
    streamed = post(fleet, "/v1/chat/completions", {
        **body, "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}})
    chunks = events(streamed)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected_text(tokenizer_dir, 12) and len(chunks) > 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]["usage"]
    # vLLM's chunks count themselves: the sum, not the last GenerateComplete's 1.
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 12)
    sim_block_tokens = 16  # picker_sim.engine.SimConfig.block_tokens
    assert usage["prompt_tokens_details"]["cached_tokens"] == \
        prompt // sim_block_tokens * sim_block_tokens > 0


def test_completions_streamed_and_not(fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "prompt": "once upon a time", "max_tokens": 5}
    answer = post(fleet, "/v1/completions", body).json()
    assert answer["object"] == "text_completion"
    assert (answer["choices"][0]["text"], answer["choices"][0]["finish_reason"]) == (
        expected_text(tokenizer_dir, 5), "length")
    assert answer["usage"]["completion_tokens"] == 5
    streamed = events(post(fleet, "/v1/completions", {
        **body, "stream": True, "stream_options": {"include_usage": True}}))
    assert "".join(c["choices"][0]["text"] for c in streamed if c["choices"]) == \
        expected_text(tokenizer_dir, 5)
    assert streamed[-1]["usage"]["completion_tokens"] == 5


def test_a_client_that_hangs_up_reaches_the_sim_as_vllms_abort(fleet: Fleet) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 400, "stream": True}
    with loopback().stream("POST", f"{fleet.envoy_url}/v1/chat/completions", json=body,
                           headers={"x-request-id": "hang-up-v"}, timeout=30) as streaming:
        assert streaming.status_code == 200
        next(streaming.iter_lines())  # generating: 400 tokens take the sim ~1 s
    sim = fleet.processes["sim-v1"]
    # The sim's line for vLLM's AbortRequest (ids only), picker_sim.grpc_vllm.
    wait_until(lambda: "Abort 'hang-up-v' (no reason" in sim.log_tail(200),
               what="the sim's Abort line")


def test_smg_and_the_picker_give_one_answer_from_the_same_vllm_sim(tmp_path: Path) -> None:
    """The real SMG gateway (PyPI smg: told only the url, it finds the worker's service; the
    sim answers UNIMPLEMENTED to SGLang's) and the picker through Envoy, on one vLLM gRPC sim:
    the same text, finish_reason and counts, streamed (vLLM's delta counts summed) and not."""
    write_tokenizer(tmp_path / "tok")
    spec = SimSpec("v-smg", MODEL, ["--grpc", "--runtime", "vllm", "--tokenizer",
                                    str(tmp_path / "tok"), "--block-tokens", "4"])
    [sim] = start_sims([spec], tmp_path)
    worker = {"url": f"grpc://127.0.0.1:{spec.port}", "connection_mode": "grpc",
              "runtime_type": "vllm", "models": [MODEL], "tokenizer_path": str(tmp_path / "tok")}
    body = {"model": MODEL, "max_tokens": 5,
            "messages": [{"role": "system", "content": "what is two plus two"},
                         {"role": "user", "content": "hello there how are you"}]}
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    try:
        with smg_gateway(["--worker-urls", f"grpc://127.0.0.1:{spec.port}"], tmp_path) as smg:
            theirs = post_until_served(f"{smg}/v1/chat/completions", body)
            their_events = streamed_answer(loopback().post(f"{smg}/v1/chat/completions",
                                                           json=stream, timeout=10))
        with local_fleet([], body_mode="FULL_DUPLEX_STREAMED", envoy_template=ENVOY_GATEWAY,
                         picker_settings={"extproc": {"tls": "self_signed"},
                                          "workers": [worker]}) as fleet:
            ours = post(fleet, "/v1/chat/completions", body).json()
            our_events = streamed_answer(post(fleet, "/v1/chat/completions", stream))
    finally:
        sim.stop()
    assert ours["choices"][0]["message"]["content"] == " ".join(WORDS[:5])
    assert summary(ours["choices"][0]["message"]["content"], ours) == \
        summary(theirs["choices"][0]["message"]["content"], theirs)
    assert our_events == their_events and our_events[0] == " ".join(WORDS[:5])


def summary(text: str, answer: dict[str, Any]) -> tuple[str, str, int, int]:
    usage = answer["usage"]
    return (text, answer["choices"][0]["finish_reason"], usage["prompt_tokens"],
            usage["completion_tokens"])


def streamed_answer(response: httpx.Response) -> tuple[str, str, int, int]:
    """A streamed chat answer's text, finish_reason and usage counts."""
    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reason = next(c["choices"][0]["finish_reason"] for c in chunks
                  if c["choices"] and c["choices"][0].get("finish_reason"))
    return summary(text, {"choices": [{"finish_reason": reason}], "usage": chunks[-1]["usage"]})
