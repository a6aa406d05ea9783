"""The simulated engine over real HTTP on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncGenerator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.loopback import loopback
from picker_sim import WORKER_HEADER, SimConfig, add_sim_arguments, config_from_args, sim_runner
from picker_sim.engine import SimEngine
from tests.sim_thread import running_sim
from tests.waiting import wait_until


@pytest.fixture
def sim_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with running_sim(**getattr(request, "param", {})) as url:
        yield url


def chat(stream: bool = False, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "one two three"}],
            "stream": stream, **extra}


def metric(base: str, name: str) -> float:
    text = loopback().get(f"{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")


def test_chat_completion_shape_usage_and_worker_header(sim_url: str) -> None:
    response = loopback().post(f"{sim_url}/v1/chat/completions", json=chat(max_tokens=4))
    assert response.status_code == 200
    assert response.headers[WORKER_HEADER] == "w1"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert len(body["choices"][0]["message"]["content"].split()) == 4
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8,
                             "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize("stream", [False, True])
def test_usage_reports_the_prompt_tokens_served_from_the_cache(sim_url: str,
                                                               stream: bool) -> None:
    """What the picker's prediction audit compares its predicted hits with."""
    body = {"model": "m", "messages": [{"role": "user", "content": " ".join(["w"] * 40)}],
            "max_tokens": 2, "stream": stream}

    def usage() -> dict[str, object]:
        response = loopback().post(f"{sim_url}/v1/chat/completions", json=body)
        if not stream:
            return dict(response.json()["usage"])
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
        return dict(json.loads(events[-1])["usage"])

    assert usage()["prompt_tokens_details"] == {"cached_tokens": 0}
    # 41 tokens ("user" and 40 words): two whole blocks of 16 are cached the second time.
    assert usage()["prompt_tokens_details"] == {"cached_tokens": 32}


def test_completions_shape(sim_url: str) -> None:
    body = {"model": "m", "prompt": "hello there", "max_tokens": 2}
    response = loopback().post(f"{sim_url}/v1/completions", json=body).json()
    assert response["object"] == "text_completion"
    assert len(response["choices"][0]["text"].split()) == 2


def test_stream_has_one_chunk_per_token_then_usage_then_done(sim_url: str) -> None:
    with loopback().stream("POST", f"{sim_url}/v1/chat/completions",
                           json=chat(stream=True, max_tokens=5)) as response:
        assert response.headers[WORKER_HEADER] == "w1"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0].get("delta", {}).get("content")]
    assert len(tokens) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{nope", 400), (json.dumps({"model": "other", "messages": []}).encode(), 404)],
)
def test_errors_are_openai_shaped(sim_url: str, body: bytes, status: int) -> None:
    response = loopback().post(f"{sim_url}/v1/chat/completions", content=body)
    assert response.status_code == status
    assert response.headers[WORKER_HEADER] == "w1"
    assert set(response.json()["error"]) == {"message", "type", "code"}


def test_completions_stream_and_max_completion_tokens(sim_url: str) -> None:
    body = {"model": "m", "prompt": "hi", "stream": True, "max_tokens": 9,
            "max_completion_tokens": 3}
    with loopback().stream("POST", f"{sim_url}/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) == 3
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3,
                                   "total_tokens": 4,
                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert loopback().get(f"{sim_url}/sim/stats").json()["completed"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [({"messages": []}, "missing_model"),
     ({"model": "m", "messages": [], "max_tokens": 0}, "invalid_max_tokens"),
     ({"model": "m", "messages": [], "max_completion_tokens": "5"}, "invalid_max_tokens"),
     ([1, 2], "invalid")],
)
def test_bad_requests_are_400_naming_the_problem(sim_url: str, body: object, code: str) -> None:
    response = loopback().post(f"{sim_url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_models_and_health(sim_url: str) -> None:
    assert loopback().get(f"{sim_url}/health").status_code == 200
    assert [m["id"] for m in loopback().get(f"{sim_url}/v1/models").json()["data"]] == ["m"]


@pytest.mark.parametrize("sim_url", [{"ttft_ms": 1000}], indirect=True)
def test_metrics_use_vllm_names_and_follow_running_requests(sim_url: str) -> None:
    assert metric(sim_url, "vllm:num_requests_running") == 0

    async def slow_and_look() -> float:
        """The running count while the request is in the engine (looked at until it shows or
        the request ends: a loaded machine may deliver the request late)."""
        async with httpx.AsyncClient() as client:
            pending = asyncio.create_task(
                client.post(f"{sim_url}/v1/chat/completions", json=chat(max_tokens=1))
            )
            running = 0.0
            while running == 0 and not pending.done():
                running = await asyncio.to_thread(metric, sim_url, "vllm:num_requests_running")
            await pending
            return running

    assert asyncio.run(slow_and_look()) == 1
    assert metric(sim_url, "vllm:num_requests_waiting") == 0
    assert metric(sim_url, "vllm:kv_cache_usage_perc") == 0
    assert metric(sim_url, "vllm:request_success_total") == 1


@pytest.mark.parametrize("sim_url", [{"failure_rate": 1.0}], indirect=True)
def test_failure_rate_one_fails_every_request(sim_url: str) -> None:
    for _ in range(3):
        assert loopback().post(f"{sim_url}/v1/chat/completions", json=chat()).status_code == 500
    assert loopback().get(f"{sim_url}/sim/stats").json()["failed"] == 3


@pytest.mark.parametrize("sim_url", [{"tpot_ms": 50}], indirect=True)
def test_cancelled_stream_is_counted_and_frees_the_slot(sim_url: str) -> None:
    with loopback().stream("POST", f"{sim_url}/v1/chat/completions",
                           json=chat(stream=True, max_tokens=50)) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = loopback().get(f"{sim_url}/sim/stats").json()
        if stats["cancelled"] == 1 and stats["running"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"cancel not observed: {stats}")


@pytest.mark.parametrize("sim_url", [{"ttft_ms": 3000}], indirect=True)
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", chat()),
    ("/v1/messages", {"model": "m", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a", "b"]}),
    ("/v1/score", {"model": "m", "text_1": "q", "text_2": ["a", "b"]}),
])
def test_a_non_streamed_answer_whose_client_left_is_cancelled(
        sim_url: str, path: str, body: dict[str, object]) -> None:
    """As vLLM's `with_cancellation` handlers do: the engine stops computing an answer nobody
    will read, and its slot frees (it would otherwise run the whole 3 s first token)."""
    with pytest.raises(httpx.ReadTimeout):  # the client leaves once the request is sent
        loopback().post(f"{sim_url}{path}", json=body, timeout=httpx.Timeout(5, read=0.3))
    wait_until(lambda: loopback().get(f"{sim_url}/sim/stats").json()["cancelled"] == 1,
               timeout=2, what="the engine cancelling it")
    stats = loopback().get(f"{sim_url}/sim/stats").json()
    assert (stats["running"], stats["completed"]) == (0, 0)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SimConfig(failure_rate=2.0)


def test_control_knobs_change_health_and_metrics(sim_url: str) -> None:
    assert loopback().post(f"{sim_url}/sim/control",
                           json={"health_status": 503, "extra_waiting": 4}).status_code == 200
    assert loopback().get(f"{sim_url}/health").status_code == 503
    assert metric(sim_url, "vllm:num_requests_waiting") == 4
    bad = loopback().post(f"{sim_url}/sim/control", json={"colour": 1})
    assert bad.status_code == 400 and "colour" in bad.json()["error"]["message"]
    assert loopback().post(f"{sim_url}/sim/control", json={"health_status": "x"}).status_code == 400


# The first request holds the only slot for 1.5 s: long enough for the second to queue and be
# seen queued on a loaded machine (400 ms was not, under -n 4 with other work running).
@pytest.mark.parametrize("sim_url", [{"ttft_ms": 1500, "max_concurrency": 1}], indirect=True)
def test_beyond_max_concurrency_requests_wait_and_may_leave_the_queue(sim_url: str) -> None:
    first = threading.Thread(
        target=httpx.post, args=(f"{sim_url}/v1/chat/completions",), kwargs={"json": chat()}
    )
    first.start()
    # Conditions, not sleeps: on a busy machine either request may take longer to arrive.
    wait_until(lambda: metric(sim_url, "vllm:num_requests_running") == 1, what="the first")
    with loopback().stream("POST", f"{sim_url}/v1/chat/completions", json=chat(stream=True)):
        wait_until(lambda: metric(sim_url, "vllm:num_requests_waiting") == 1, what="queued")
        assert metric(sim_url, "vllm:num_requests_waiting") == 1
        assert metric(sim_url, "vllm:num_requests_running") == 1
        assert metric(sim_url, "vllm:kv_cache_usage_perc") == 1
    first.join()
    stats = loopback().get(f"{sim_url}/sim/stats").json()
    assert (stats["waiting"], stats["running"]) == (0, 0)
    assert (stats["completed"], stats["cancelled"]) == (1, 1)


async def test_stream_closed_while_parked_at_a_yield_is_cancelled() -> None:
    """A slow reader's generator sits at `yield` when the server abandons it: GeneratorExit."""
    engine = SimEngine(SimConfig(ttft_ms=0, tpot_ms=0))

    async def tokens(finish_early: bool) -> AsyncGenerator[int, None]:
        async with engine.admitted(["a"]) as run:
            if finish_early:
                run.finish()
            yield 1
            yield 2

    for finish_early in (False, True):
        stream = tokens(finish_early)
        assert await anext(stream) == 1
        assert engine.running == 1
        await stream.aclose()
    assert (engine.running, engine.cancelled, engine.completed) == (0, 1, 1)


def test_cli_flags_build_the_config_and_profiles_yield_to_explicit_flags() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    config = config_from_args(parser.parse_args(
        ["--port", "9001", "--model", "x", "--tpot-ms", "7", "--profile", "8b-h100-like"]))
    assert (config.model, config.worker_id, config.tpot_ms) == ("x", "sim-9001", 7.0)
    assert config.max_concurrency == 32  # from the profile
    plain = config_from_args(parser.parse_args(["--port", "1", "--worker-id", "w"]))
    assert (plain.worker_id, plain.ttft_ms) == ("w", 20.0)
    with pytest.raises(ValueError, match="ttft_ms"):
        config_from_args(parser.parse_args(["--port", "1", "--ttft-ms", "-1"]))


def cache_config_labels(base: str) -> dict[str, str]:
    for family in text_string_to_metric_families(loopback().get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == "vllm:cache_config_info":
                assert sample.value == 1
                return dict(sample.labels)
    raise AssertionError("vllm:cache_config_info not exported")


def test_cache_config_info_reports_the_sim_cache_geometry(sim_url: str) -> None:
    assert cache_config_labels(sim_url) == {"block_size": "16", "num_gpu_blocks": "4096"}
    with running_sim(block_tokens=32, cache_blocks=100) as other:
        assert cache_config_labels(other) == {"block_size": "32", "num_gpu_blocks": "100"}


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
def test_control_knobs_kv_usage_and_health_delay(sim_url: str) -> None:
    assert loopback().post(f"{sim_url}/sim/control",
                           json={"kv_usage": 0.75, "health_delay_ms": 300}).status_code == 200
    assert metric(sim_url, "vllm:kv_cache_usage_perc") == 0.75
    started = time.monotonic()
    assert loopback().get(f"{sim_url}/health").status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.TimeoutException):
        loopback().get(f"{sim_url}/health", timeout=0.1)
    assert loopback().post(f"{sim_url}/sim/control",
                           json={"health_delay_ms": 0, "extra_waiting": 0}).status_code == 200
    started = time.monotonic()
    loopback().get(f"{sim_url}/health")
    assert time.monotonic() - started < 0.3


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"colour": 1}, "colour"),
        ({"health_status": "503"}, "health_status"),
        ({"health_status": 503.0}, "health_status"),
        ({"health_status": True}, "health_status"),
        ({"health_status": 42}, "health_status"),
        ({"health_delay_ms": -1}, "health_delay_ms"),
        ({"health_delay_ms": None}, "health_delay_ms"),
        ({"extra_waiting": 1.5}, "extra_waiting"),
        ({"extra_waiting": -3}, "extra_waiting"),
        ({"kv_usage": 1.5}, "kv_usage"),
        ({"kv_usage": [0.5]}, "kv_usage"),
        # All or nothing: the good knob before the bad one is not applied either.
        ({"extra_waiting": 5, "kv_usage": "high"}, "kv_usage"),
    ],
)
def test_bad_controls_are_400_naming_the_key_and_change_nothing(
        sim_url: str, changes: dict[str, object], key: str) -> None:
    reply = loopback().post(f"{sim_url}/sim/control", json=changes)
    assert reply.status_code == 400
    assert key in reply.json()["error"]["message"]
    assert metric(sim_url, "vllm:num_requests_waiting") == 0
    assert loopback().get(f"{sim_url}/health").status_code == 200


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b"NaN"])
def test_control_body_must_be_a_json_object(sim_url: str, body: bytes) -> None:
    assert loopback().post(f"{sim_url}/sim/control", content=body).status_code == 400


@pytest.mark.parametrize(("argv", "flag"), [
    (["--tokenizer", "/tmp/t"], "--tokenizer"),
    (["--bootstrap-port", "9"], "--bootstrap-port"),
    (["--kv-events"], "--kv-events"),
    (["--grpc", "--api-key", "k"], "--api-key"),
    (["--grpc", "--kv-events-port", "9"], "--kv-events-port"),
    (["--grpc", "--role", "decode", "--pd-protocol", "nixl"], "--pd-protocol"),
    (["--grpc", "--role", "prefill"], "--bootstrap-port"),
    (["--grpc", "--bootstrap-port", "9"], "--bootstrap-port"),
    (["--grpc", "--tokenizer", "/nonexistent/dir"], "tokenizer.json"),
    (["--output-text", "hi"], "--output-text"),
    (["--grpc", "--output-text", "hi"], "--output-text"),
    (["--runtime", "vllm"], "--runtime"),
    (["--grpc", "--runtime", "vllm", "--role", "prefill", "--bootstrap-port", "9"], "--role"),
])
def test_grpc_flags_that_make_no_sim_are_refused_naming_the_flag(argv: list[str],
                                                                 flag: str) -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    with pytest.raises(ValueError, match=flag):
        sim_runner(parser.parse_args(["--port", "8000", *argv]))
