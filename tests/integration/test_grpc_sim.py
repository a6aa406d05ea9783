"""`llm-picker sim --grpc`: SGLang's scheduler service, token ids in and out, through a real
gRPC client (smg-grpc-proto's stubs) and through the real SMG gateway (PyPI `smg`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import shutil
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2_grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from picker_bench.loopback import loopback
from picker_bench.stack import Process, SimSpec, free_port, spawn, start_sims, wait_http
from picker_sim.engine import WORDS, SimConfig
from picker_sim.grpc_server import serve_grpc
from picker_sim.token_vocab import SimVocabulary
from tests.waiting import wait_until

MODEL = "sim-model"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}")
PROMPT_WORDS = ["hello", "there", "how", "are", "you", "what", "is", "two", "plus"]


def write_tokenizer(directory: Path) -> Tokenizer:
    """A word-level tokenizer directory as engines load one: tokenizer.json (with a decoder
    joining words by spaces) and tokenizer_config.json (special tokens, chat template)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for word in (*WORDS, "system", "user", "assistant", *PROMPT_WORDS):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tokenizer


@contextlib.asynccontextmanager
async def grpc_sim(tmp_path: Path, runtime: str = "sglang", **settings: Any) -> AsyncIterator[Any]:
    """A gRPC sim served on this loop (real sockets on loopback), and a stub (smg-grpc-proto's,
    for the `runtime`'s service) to call it."""
    config = SimConfig(**{"model": MODEL, "worker_id": "g1", "ttft_ms": 1, "tpot_ms": 1,
                          **settings})
    write_tokenizer(tmp_path / "tok")
    port = free_port()
    task = asyncio.create_task(serve_grpc(config, SimVocabulary.from_directory(tmp_path / "tok"),
                                          "127.0.0.1", port, runtime=runtime))
    stubs = {"sglang": pb_grpc.SglangSchedulerStub, "vllm": vllm_engine_pb2_grpc.VllmEngineStub}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            yield stubs[runtime](channel)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def generate(ids: list[int], max_new_tokens: int, stream: bool, rid: str = "r1",
             **fields: Any) -> Any:
    return pb.GenerateRequest(request_id=rid, tokenized=pb.TokenizedInput(input_ids=ids),
                              sampling_params=pb.SamplingParams(max_new_tokens=max_new_tokens),
                              stream=stream, **fields)


async def test_generate_streams_its_tokenizers_ids_and_completes(tmp_path: Path) -> None:
    async with grpc_sim(tmp_path, block_tokens=4) as sim:
        tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
        ids = tokenizer.encode(" ".join(PROMPT_WORDS)).ids
        streamed = [m async for m in sim.Generate(generate(ids, 3, stream=True))]
        assert [m.WhichOneof("response") for m in streamed] == ["chunk"] * 3 + ["complete"]
        out = [i for m in streamed[:3] for i in m.chunk.token_ids]
        assert tokenizer.decode(out) == "the quick brown"
        assert [m.chunk.completion_tokens for m in streamed[:3]] == [1, 2, 3]  # cumulative
        assert {m.chunk.prompt_tokens for m in streamed[:3]} == {len(ids)}
        done = streamed[-1].complete
        # As the servicer builds it from the last output: that chunk's ids only.
        assert (list(done.output_ids), done.finish_reason, done.completion_tokens) == (
            out[-1:], "length", 3)
        # The same prompt again: its full blocks (8 of 9 tokens, blocks of 4) are cached.
        [again] = [m async for m in sim.Generate(generate(ids, 2, stream=False, rid="r2"))]
        assert list(again.complete.output_ids) == out[:2]
        assert (again.complete.prompt_tokens, again.complete.cached_tokens) == (len(ids), 8)


@pytest.mark.parametrize(("request_", "code", "words"), [
    (generate([], 3, stream=False), grpc.StatusCode.INVALID_ARGUMENT, "input_ids"),
    (generate([5], 0, stream=False), grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
])
async def test_bad_generate_requests_end_with_a_status_naming_the_field(
        tmp_path: Path, request_: Any, code: grpc.StatusCode, words: str) -> None:
    async with grpc_sim(tmp_path) as sim:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [m async for m in sim.Generate(request_)]
        assert caught.value.code() == code and words in (caught.value.details() or "")


async def test_abort_ends_the_stream_without_a_completion(tmp_path: Path) -> None:
    async with grpc_sim(tmp_path, tpot_ms=20) as sim:
        received: list[Any] = []
        call = sim.Generate(generate([5, 6, 7], 200, stream=True, rid="long"))
        async for message in call:
            received.append(message)
            if len(received) == 2:
                answer = await sim.Abort(pb.AbortRequest(request_id="long"))
                assert answer.success
        assert len(received) < 10
        assert all(m.WhichOneof("response") == "chunk" for m in received)
        assert await call.code() == grpc.StatusCode.OK
        missing = await sim.Abort(pb.AbortRequest(request_id="long"))
        assert (missing.success, missing.message) == (False, "Request long not found")


async def test_get_loads_reports_running_and_waiting_requests(tmp_path: Path) -> None:
    async with grpc_sim(tmp_path, max_concurrency=1, tpot_ms=20) as sim:
        idle = await sim.GetLoads(pb.GetLoadsRequest())
        assert (idle.loads[0].num_running_reqs, idle.loads[0].num_waiting_reqs) == (0, 0)

        async def drain(rid: str) -> None:
            _ = [m async for m in sim.Generate(generate([1, 2], 50, True, rid=rid))]

        jobs = [asyncio.create_task(drain(f"q{i}")) for i in range(3)]
        busy: list[Any] = []

        async def sample() -> bool:
            busy.append(await sim.GetLoads(pb.GetLoadsRequest(include=["core"])))
            return (busy[-1].loads[0].num_running_reqs, busy[-1].loads[0].num_waiting_reqs) \
                == (1, 2)

        for _ in range(100):
            if await sample():
                break
        for job in jobs:
            job.cancel()
        assert (busy[-1].aggregate.total_running_reqs, busy[-1].aggregate.total_waiting_reqs) \
            == (1, 2)
        assert busy[-1].loads[0].token_usage == 1.0  # one slot of one in use
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sim.GetLoads(pb.GetLoadsRequest(include=["cores"]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_model_and_server_info_and_the_tokenizer_bundle(tmp_path: Path) -> None:
    async with grpc_sim(tmp_path, max_concurrency=7) as sim:
        info = await sim.GetModelInfo(pb.GetModelInfoRequest())
        assert (info.served_model_name, info.tokenizer_path, info.is_generation) == (
            MODEL, str(tmp_path / "tok"), True)
        assert (list(info.eos_token_ids), info.bos_token_id) == ([2], 1)
        server = await sim.GetServerInfo(pb.GetServerInfoRequest())
        args = dict(server.server_args.items())
        assert (args["dp_size"], args["max_running_requests"], args["disaggregation_mode"],
                server.server_type) == (1, 7, "null", "grpc")
        chunks = [c async for c in sim.GetTokenizer(common_pb2.GetTokenizerRequest())]
        data = b"".join(c.data for c in chunks)
        assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest()
        assert all(not c.sha256 for c in chunks[:-1])
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert sorted(archive.namelist()) == ["tokenizer.json", "tokenizer_config.json"]
            assert archive.read("tokenizer.json") == \
                (tmp_path / "tok" / "tokenizer.json").read_bytes()


async def test_a_pd_pair_hands_the_prompt_over_by_bootstrap_room(tmp_path: Path) -> None:
    ports = {role: free_port() for role in ("prefill", "decode", "bootstrap")}
    specs = [SimSpec("p0", MODEL, ["--grpc", "--role", "prefill", "--bootstrap-port",
                                   str(ports["bootstrap"])], port=ports["prefill"]),
             SimSpec("d0", MODEL, ["--grpc", "--role", "decode"], port=ports["decode"])]
    procs = start_sims(specs, tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['prefill']}") as p_chan, \
                grpc.aio.insecure_channel(f"127.0.0.1:{ports['decode']}") as d_chan:
            prefill, decode = pb_grpc.SglangSchedulerStub(p_chan), \
                pb_grpc.SglangSchedulerStub(d_chan)
            params = pb.DisaggregatedParams(bootstrap_host="127.0.0.1",
                                            bootstrap_port=ports["bootstrap"],
                                            bootstrap_room=4242)
            ids = list(range(100, 140))
            # As SMG sends them: both at once, the same room.
            p_out, d_out = await asyncio.gather(
                _collect(prefill.Generate(generate(ids, 5, False, disaggregated_params=params))),
                _collect(decode.Generate(generate(ids, 5, False, disaggregated_params=params))))
            assert p_out[-1].complete.completion_tokens == 1  # the prompt's KV and one token
            done = d_out[-1].complete
            assert (done.completion_tokens, done.cached_tokens) == (5, len(ids))
            server = await prefill.GetServerInfo(pb.GetServerInfoRequest())
            assert dict(server.server_args.items())["disaggregation_bootstrap_port"] == \
                ports["bootstrap"]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _collect(decode.Generate(generate(ids, 5, False, rid="no-room")))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "disaggregated_params" in (caught.value.details() or "")
    finally:
        for proc in procs:
            proc.stop()


async def _collect(call: Any) -> list[Any]:
    return [m async for m in call]


@contextlib.contextmanager
def smg_gateway(workers: Sequence[str], workdir: Path, *args: str) -> Iterator[str]:
    """The real SMG gateway (PyPI smg) in gRPC worker mode, on loopback; yields its url.
    `workers`: how it is told its workers (`--worker-urls URL`, or the PD mode's
    `--pd-disaggregation --prefill URL PORT --decode URL`); `args`: more `smg launch` flags
    (parsers, ...)."""
    port, metrics = free_port(), free_port()
    proc: Process = spawn("smg", [
        sys.executable, "-m", "smg", "launch", "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics),
        *workers, "--log-level", "warn", *args], workdir)
    try:
        wait_http(proc, f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_smg_routes_chat_and_completions_to_the_grpc_sim(tmp_path: Path) -> None:
    """SMG loads the tokenizer over GetTokenizer (the directory the sim was given is gone, as
    on another host), renders the chat template, tokenizes, and detokenizes what the sim
    streams back: the answer is the sim's words, with the sim's counts."""
    tokenizer = write_tokenizer(tmp_path / "tok")
    spec = SimSpec("g1", MODEL, ["--grpc", "--tokenizer", str(tmp_path / "tok"),
                                 "--block-tokens", "4"])
    [sim] = start_sims([spec], tmp_path)
    shutil.rmtree(tmp_path / "tok")
    try:
        with smg_gateway(["--worker-urls", f"grpc://127.0.0.1:{spec.port}"], tmp_path) as smg:
            messages = [{"role": "system", "content": "what is two plus two"},
                        {"role": "user", "content": "hello there how are you"}]
            rendered = "system what is two plus two user hello there how are you assistant "
            prompt_ids = tokenizer.encode(rendered, add_special_tokens=False).ids
            body = {"model": MODEL, "messages": messages, "max_tokens": 5}
            answer = post_until_served(f"{smg}/v1/chat/completions", body)
            expected = tokenizer.decode(
                tokenizer.encode(" ".join(WORDS), add_special_tokens=False).ids[:5])
            assert expected == "the quick brown fox jumps"
            assert answer["choices"][0]["message"]["content"] == expected
            assert answer["choices"][0]["finish_reason"] == "length"
            usage = answer["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (len(prompt_ids), 5)
            # The same prompt again: its full blocks of 4 are served from the sim's cache.
            streamed = loopback().post(f"{smg}/v1/chat/completions", timeout=10, json={
                **body, "stream": True, "stream_options": {"include_usage": True}})
            events = [json.loads(line[6:]) for line in streamed.text.splitlines()
                      if line.startswith("data: {")]
            text = "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in events if e["choices"])
            assert text == expected
            cached = events[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached == len(prompt_ids) // 4 * 4
            completion = loopback().post(f"{smg}/v1/completions", timeout=10, json={
                "model": MODEL, "prompt": "hello there", "max_tokens": 3}).json()
            assert completion["choices"][0]["text"] == "the quick brown"
            assert completion["usage"]["prompt_tokens"] == 2
    finally:
        sim.stop()


def post_until_served(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """SMG registers the worker and fetches its tokenizer after it answers /health: a request
    before the worker is registered is a 404 naming no worker for the model, one before the
    tokenizer is in a 503 (bounded wait)."""
    answers: list[httpx.Response] = []

    def served() -> bool:
        answers.append(loopback().post(url, json=body, timeout=10))
        unregistered = answers[-1].status_code == 404 and "No worker" in answers[-1].text
        return answers[-1].status_code != 503 and not unregistered

    wait_until(served, timeout=15, what=f"SMG serving {url}")
    assert answers[-1].status_code == 200, answers[-1].text
    return dict(answers[-1].json())
