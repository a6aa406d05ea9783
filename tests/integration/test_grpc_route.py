"""The gRPC regular router through real Envoy (the gateway configuration: both bodies
FULL_DUPLEX_STREAMED) and `llm-picker sim --grpc` processes: the picker rewrites OpenAI requests
into SGLang's Generate call and the engine's stream back into OpenAI JSON and SSE."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2 as upstream
from tokenizers import Tokenizer

from picker.tokens import load_tokenizer
from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_GATEWAY, Fleet, SimSpec, free_port, local_fleet
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from picker_sim.token_vocab import SimVocabulary
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER
from tests.waiting import wait_until

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say café"}]


def grpc_sim(worker_id: str, directory: Path, *args: str, runtime: str = "sglang") -> SimSpec:
    """A gRPC sim serving `runtime`'s service, registered as that runtime_type."""
    port = free_port()
    return SimSpec(worker_id, MODEL, ["--grpc", "--runtime", runtime, "--tokenizer",
                                      str(directory), "--ttft-ms", "5", "--tpot-ms", "2", *args],
                   port=port,
                   worker={"url": f"grpc://127.0.0.1:{port}", "connection_mode": "grpc",
                           "runtime_type": runtime, "tokenizer_path": str(directory)})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama", "llama-3.1")


@pytest.fixture(scope="module")
def fleet(tokenizer_dir: Path) -> Iterator[Fleet]:
    """One gRPC sim, one that always fails, and an HTTP sim of another model."""
    sims = [grpc_sim("g1", tokenizer_dir),
            SimSpec("h1", "http-model", ["--ttft-ms", "5", "--tpot-ms", "2"])]
    failing = grpc_sim("bad", tokenizer_dir, "--failure-rate", "1")
    failing.model = "failing-model"
    sims.append(failing)
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH}) as fleet:
        yield fleet


def expected_text(directory: Path, tokens: int) -> str:
    """What the sim generates, decoded: its output ids cycled (picker_sim.token_vocab)."""
    ids = SimVocabulary.from_directory(directory).output_ids
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return str(tokenizer.decode([ids[i % len(ids)] for i in range(tokens)],
                                skip_special_tokens=True))


def post(fleet: Fleet, path: str, body: dict[str, Any]) -> httpx.Response:
    return loopback().post(f"{fleet.envoy_url}{path}", json=body, timeout=30)


def events(response: httpx.Response) -> list[Any]:
    lines = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", response.text
    return [json.loads(line) for line in lines[:-1]]


def test_non_streamed_chat_returns_the_engines_text_and_usage(
        fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 7}
    response = post(fleet, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    prompt = len(load_tokenizer(str(tokenizer_dir)).body_ids(body))
    assert answer["object"] == "chat.completion" and answer["model"] == MODEL
    assert answer["choices"][0]["message"] == {"role": "assistant",
                                               "content": expected_text(tokenizer_dir, 7)}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["prompt_tokens"] == prompt
    assert answer["usage"]["completion_tokens"] == 7
    assert answer["usage"]["total_tokens"] == prompt + 7
    # The same prompt again: the engine reports the blocks it had cached.
    again = post(fleet, "/v1/chat/completions", body).json()["usage"]
    sim_block_tokens = 16  # picker_sim.engine.SimConfig.block_tokens
    assert again["prompt_tokens_details"]["cached_tokens"] == \
        prompt // sim_block_tokens * sim_block_tokens > 0


def test_streamed_chat_arrives_as_sse_with_usage(fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    response = post(fleet, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected_text(tokenizer_dir, 12)
    assert len(chunks) > 3  # token by token, not one event
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]["usage"]
    prompt = len(load_tokenizer(str(tokenizer_dir)).body_ids(body))
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 12)


def test_completions_streamed_and_not(fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "prompt": "once upon a time", "max_tokens": 5}
    answer = post(fleet, "/v1/completions", body).json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == expected_text(tokenizer_dir, 5)
    assert answer["usage"]["prompt_tokens"] == len(
        load_tokenizer(str(tokenizer_dir)).body_ids(body))
    streamed = post(fleet, "/v1/completions", {**body, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in events(streamed)) == \
        expected_text(tokenizer_dir, 5)


def test_the_http_model_is_unaffected(fleet: Fleet) -> None:
    response = post(fleet, "/v1/chat/completions",
                    {"model": "http-model", "messages": MESSAGES, "max_tokens": 3})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_a_request_the_generate_call_cannot_carry_is_an_openai_400(fleet: Fleet) -> None:
    response = post(fleet, "/v1/chat/completions",
                    {"model": MODEL, "messages": MESSAGES, "stop": 5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stop"
    response = post(fleet, "/v1/chat/completions",
                    {"model": MODEL, "messages": MESSAGES, "n": 2})
    assert response.status_code == 400 and "n must be 1" in response.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_error_is_an_openai_error(fleet: Fleet, stream: bool) -> None:
    response = post(fleet, "/v1/chat/completions",
                    {"model": "failing-model", "messages": MESSAGES, "stream": stream})
    assert response.status_code == 500, response.text
    error = json.loads(response.text)["error"]
    assert "simulated engine failure" in error["message"]
    assert "gRPC status 13" in error["message"]


def test_every_lease_is_released(fleet: Fleet) -> None:
    def in_flight() -> float:
        text = loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("llm_picker_worker_in_flight"))
    post(fleet, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 3})
    wait_until(lambda: in_flight() == 0, what="in-flight back to 0")


def test_a_model_on_http_and_grpc_workers_keeps_each_request_within_one_router(
        tokenizer_dir: Path) -> None:
    """enable_igw: the HTTP router and the gRPC router both serve the model; the less loaded
    one takes a request (a tie: HTTP). While a long HTTP stream runs, the next request goes to
    the gRPC worker, transcoded; the HTTP one reaches its engine untouched."""
    sims = [grpc_sim("g-mixed", tokenizer_dir),
            SimSpec("h-mixed", MODEL, ["--ttft-ms", "5", "--tpot-ms", "20"])]
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed", "fallbacks": 1},
                                      "enable_igw": True, **FAST_HEALTH}) as mixed:
        long = {"model": MODEL, "messages": MESSAGES, "max_tokens": 60, "stream": True}
        with loopback().stream("POST", f"{mixed.envoy_url}/v1/chat/completions", json=long,
                               timeout=30) as streaming:
            assert streaming.headers[SIM_HEADER] == "h-mixed"
            lines = streaming.iter_lines()
            next(lines)
            time.sleep(0.1)  # the HTTP engine holds the stream for ~1.1 s more
            response = post(mixed, "/v1/chat/completions",
                            {"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
            assert SIM_HEADER not in response.headers  # not the HTTP sim's answer
            assert response.json()["choices"][0]["message"]["content"] == \
                expected_text(tokenizer_dir, 4)
            assert "data: [DONE]" in list(lines)
        # Idle again: a tie, the HTTP router.
        again = post(mixed, "/v1/chat/completions",
                     {"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
        assert again.headers[SIM_HEADER] == "h-mixed"


def test_a_client_that_hangs_up_mid_stream_makes_the_picker_send_abort(fleet: Fleet) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 400, "stream": True}
    finished = loopback().post(f"{fleet.envoy_url}/v1/chat/completions",
                               json={**body, "max_tokens": 3}, headers={"x-request-id": "whole-1"},
                               timeout=30)
    assert finished.text.endswith("data: [DONE]\n\n")
    with loopback().stream("POST", f"{fleet.envoy_url}/v1/chat/completions", json=body,
                           headers={"x-request-id": "hang-up-1"}, timeout=30) as streaming:
        assert streaming.status_code == 200
        next(streaming.iter_lines())  # generating: 400 tokens take the sim ~1 s
    sim = fleet.processes["sim-g1"]
    wait_until(lambda: "Abort 'hang-up-1' (client disconnected)" in sim.log_tail(200),
               what="the sim's Abort line")
    assert "'whole-1'" not in sim.log_tail(200)  # an answer that ended needs no Abort


class _FailingMidway:
    """An engine that streams one token, then fails the call (status in the trailers)."""

    def generate(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield upstream.GenerateResponse(request_id=request.request_id, chunk=(
            upstream.GenerateStreamChunk(token_ids=[request.tokenized.input_ids[0]],
                                         prompt_tokens=3, completion_tokens=1)))
        context.abort(grpc.StatusCode.UNAVAILABLE, "engine restarting")

    def health(self, request: Any, context: grpc.ServicerContext) -> Any:
        return upstream.HealthCheckResponse(healthy=True)


def test_a_failure_after_the_first_token_reaches_the_client_as_an_error_event(
        tokenizer_dir: Path) -> None:
    engine, port = _FailingMidway(), free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "sglang.grpc.scheduler.SglangScheduler", {
            "Generate": grpc.unary_stream_rpc_method_handler(
                engine.generate, request_deserializer=upstream.GenerateRequest.FromString,
                response_serializer=upstream.GenerateResponse.SerializeToString),
            "HealthCheck": grpc.unary_unary_rpc_method_handler(
                engine.health, request_deserializer=upstream.HealthCheckRequest.FromString,
                response_serializer=upstream.HealthCheckResponse.SerializeToString)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    worker = {"url": f"grpc://127.0.0.1:{port}", "connection_mode": "grpc", "models": [MODEL],
              "runtime_type": "sglang", "tokenizer_path": str(tokenizer_dir)}
    try:
        with local_fleet([], body_mode="FULL_DUPLEX_STREAMED", envoy_template=ENVOY_GATEWAY,
                         picker_settings={"extproc": {"tls": "self_signed"},
                                          "workers": [worker]}) as fleet:
            response = post(fleet, "/v1/chat/completions",
                            {"model": MODEL, "messages": MESSAGES, "stream": True})
            assert response.status_code == 200
            lines = [line for line in response.text.split("\n") if line.startswith("data: ")]
            assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
            error = json.loads(lines[-2][6:])["error"]
            assert "engine restarting" in error["message"] and error["code"] == 503
            assert lines[-1] == "data: [DONE]"
            assert "grpc-status" not in response.headers
            unstreamed = post(fleet, "/v1/chat/completions",
                              {"model": MODEL, "messages": MESSAGES})
            assert unstreamed.status_code == 503
            assert "engine restarting" in unstreamed.json()["error"]["message"]
    finally:
        server.stop(None)


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_answer_before_it_and_aborts_the_generation(
        fleet: Fleet, tokenizer_dir: Path, stream: bool) -> None:
    """The sim ignores `stop` (it generates its words to max_tokens): the picker cuts the
    text before the stop string and says finish_reason "stop"; streamed, it aborts the rest
    (a non-streamed Generate answers once, with everything generated)."""
    full = expected_text(tokenizer_dir, 300)
    stop = full.split()[4]  # a word a few tokens in
    rid = f"stop-{stream}"
    started = time.monotonic()
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=30,
                               headers={"x-request-id": rid},
                               json={"model": MODEL, "messages": MESSAGES, "max_tokens": 300,
                                "stop": [stop], "stream": stream})
    if stream:
        chunks = events(response)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.json()["choices"][0]
        text, reason = choice["message"]["content"], choice["finish_reason"]
    assert (text, reason) == (full[:full.index(stop)], "stop")
    if stream:
        sim = fleet.processes["sim-g1"]
        wait_until(lambda: f"Abort {rid!r} (stop string)" in sim.log_tail(200),
                   what="the sim's Abort line")
        assert time.monotonic() - started < 300 * 0.002  # well before 300 tokens at 2 ms
