"""The real LiteLLM proxy with `litellm_plugin.proxy_hook`, driven by the openai client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from picker.tokens import load_tokenizer
from picker_bench.loopback import loopback
from picker_bench.stack import Process, SimSpec, free_port, spawn, start_sims, wait_http
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.integration.conftest import metrics_at
from tests.integration.test_grpc_route import expected_text
from tests.waiting import wait_until

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "litellm" / "config.yaml"
GRPC_CONFIG = CONFIG.with_name("grpc.yaml")
MASTER_KEY = "sk-llm-picker-example"  # the example's general_settings.master_key
SERVED_BY = "llm_provider-x-picker-sim-worker"  # the sim's header, as LiteLLM forwards it


@contextlib.contextmanager
def proxy(workdir: Path, env: dict[str, str], example: Path = CONFIG,
          sim_args: Sequence[str] = ()) -> Iterator[tuple[str, list[SimSpec], Process]]:
    """Two sims (`llm-picker sim` with `sim_args`) and the real LiteLLM proxy running an
    example config with `env` added; yields the proxy's url, the sims and the proxy process
    (not waited for: callers decide what start-up should look like)."""
    sims = [SimSpec(name, "my-model", sim_args) for name in ("A", "B")]
    procs = start_sims(sims, workdir)
    port = free_port()
    # The example names the README's sim ports; these sims run on free ports instead.
    config = workdir / "config.yaml"
    config.write_text(example.read_text().replace("127.0.0.1:8001", f"127.0.0.1:{sims[0].port}")
                      .replace("127.0.0.1:8002", f"127.0.0.1:{sims[1].port}"))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", **env}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # spawn() passes the environment on
    try:
        litellm_cli = Path(sys.executable).parent / "litellm"
        process = spawn("litellm-proxy", [str(litellm_cli), "--config", str(config), "--host",
                                          "127.0.0.1", "--port", str(port)], workdir)
        procs.append(process)
        yield f"http://127.0.0.1:{port}", sims, process
    finally:
        for proc in procs:
            proc.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def running_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Process]]:
    with proxy(tmp_path_factory.mktemp("proxy"),
               {"LLM_PICKER_POLICY__NAME": "round_robin"}) as (url, _, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)
        yield url, process


@pytest.fixture(scope="module")
def proxy_url(running_proxy: tuple[str, Process]) -> str:
    return running_proxy[0]


def test_the_proxy_log_says_the_picker_is_attached_and_what_it_routes(
        running_proxy: tuple[str, Process]) -> None:
    _, process = running_proxy
    deadline = time.monotonic() + 10  # the model list is followed every second
    while "llm-picker routes" not in process.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = process.log_tail(400)
    assert "llm-picker attached to the LiteLLM proxy: policy round_robin" in log
    assert "llm-picker routes 2 of the proxy's 2 deployments, as 2 workers" in log


def test_proxy_routes_with_the_picker(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=MASTER_KEY, max_retries=0)
    served = Counter()
    for i in range(8):
        raw = client.chat.completions.with_raw_response.create(
            model="my-model", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=2)
        assert raw.parse().choices[0].message.content
        served[raw.headers[SERVED_BY]] += 1
    assert served == {"A": 4, "B": 4}  # round robin, as configured through LLM_PICKER_*


def test_proxy_streams_through_the_picker(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=MASTER_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="my-model", messages=[{"role": "user", "content": "stream"}], max_tokens=4,
        stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert len(text.split()) == 4


def test_least_queue_in_the_proxy_reads_the_engines_queues(tmp_path: Path) -> None:
    admin = free_port()
    env = {"LLM_PICKER_POLICY__NAME": "least_queue", "LLM_PICKER_LOAD__INTERVAL_SECS": "0.1",
           "LLM_PICKER_ADMIN__ENABLED": "true", "LLM_PICKER_ADMIN__PORT": str(admin)}
    with proxy(tmp_path, env) as (url, sims, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)
        for spec, waiting in zip(sims, (9, 0), strict=True):
            loopback().post(f"http://127.0.0.1:{spec.port}/sim/control",
                            json={"extra_waiting": waiting}, timeout=5).raise_for_status()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=MASTER_KEY, max_retries=0)
        ask = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 1}
        # No request yet: the picker follows the proxy's model list from start-up.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = loopback().get(f"http://127.0.0.1:{admin}/workers",
                                     timeout=5).json()["workers"]
            if len(workers) == 2 and all("engine" in w["state"] for w in workers):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"engine metrics never scraped: {workers}")
        served = Counter(client.chat.completions.with_raw_response.create(**ask)
                         .headers[SERVED_BY] for _ in range(6))
        assert served == {"B": 6}  # the short queue


def test_a_bad_picker_setting_stops_the_proxy_at_start_up(tmp_path: Path) -> None:
    # prefix_cache reads the prefix index, which is not enabled.
    with proxy(tmp_path, {"LLM_PICKER_POLICY__NAME": "prefix_cache"}) as (_, _, process):
        try:
            code = process.popen.wait(120)
        except subprocess.TimeoutExpired:
            raise AssertionError("the proxy kept running with a bad picker setting") from None
        log = process.log_tail()
    assert code != 0
    assert "prefix.enabled" in log


def test_the_explain_header_through_the_proxy_only_when_allowed_and_asked(
        tmp_path: Path) -> None:
    env = {"LLM_PICKER_POLICY__NAME": "least_load", "LLM_PICKER_EXPLAIN__ENABLED": "true",
           "LLM_PICKER_EXPLAIN__ALLOW_HEADER": "true"}
    with proxy(tmp_path, env) as (url, _, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)
        ask = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 1}
        headers = {"authorization": f"Bearer {MASTER_KEY}"}
        plain = loopback().post(f"{url}/v1/chat/completions", json=ask, headers=headers, timeout=30)
        assert plain.status_code == 200 and "x-llm-picker-explain" not in plain.headers
        asked = loopback().post(f"{url}/v1/chat/completions", json=ask, timeout=30,
                                headers={**headers, "x-llm-picker-explain": "1"})
        assert asked.status_code == 200
        line = asked.headers["x-llm-picker-explain"]
        assert line.startswith("policy=least_load; worker=") and "reason=" in line
        worker = line.split("worker=", 1)[1].split(";", 1)[0]
        # The example config's deployment ids name the engines the sims answer as.
        assert worker == {"A": "engine-a", "B": "engine-b"}[asked.headers[SERVED_BY]]
        assert "hi" not in line.split("; ")  # no prompt text


def test_flow_control_in_the_proxy_quotas_and_ttl_answer_with_retry_after(
        tmp_path: Path) -> None:
    env = {"LLM_PICKER_FLOW__ENABLED": "true", "LLM_PICKER_FLOW__TRUST_CLIENT_HEADERS": "true",
           "LLM_PICKER_FLOW__TTL_SECS": "0.5",
           "LLM_PICKER_FLOW__SATURATION__MAX_IN_FLIGHT_PER_WORKER": "1",
           "LLM_PICKER_FLOW__QUOTAS": "{greedy: {tokens_per_minute: 50}}"}
    with proxy(tmp_path, env) as (url, sims, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)

        def chat(client: httpx.Client, flow: str, max_tokens: int = 1,
                 content: str = "hi") -> httpx.Response:
            return client.post("/v1/chat/completions", headers={
                "authorization": f"Bearer {MASTER_KEY}",
                "x-gateway-inference-fairness-id": flow}, json={
                "model": "my-model", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": content}]})

        with httpx.Client(base_url=url, timeout=30) as client:
            long_prompt = "word " * 80  # ~100 tokens as estimated: over greedy's 50 a minute
            assert chat(client, "greedy", content=long_prompt).status_code == 200
            over = chat(client, "greedy", content=long_prompt)
            assert over.status_code == 429
            # Both charges, the prompt's and the generated token's (LiteLLM reports usage),
            # must leave the rolling minute: a minute after them, in one-second steps.
            assert int(over.headers["retry-after"]) in (59, 60)
            assert "quota" in over.json()["error"]["message"]
            assert chat(client, "polite", content=long_prompt).status_code == 200

            # Both engines busy for ~2 s (1000 tokens at 2 ms): a third request waits its
            # 0.5 s TTL in the picker, then is refused.
            with ThreadPoolExecutor(2) as pool:
                busy = [pool.submit(chat, client, "long", 1000) for _ in range(2)]
                wait_until(lambda: sum(running(spec) for spec in sims) == 2, 10,
                           "both engines busy")
                expired = chat(client, "late")
                assert [b.result().status_code for b in busy] == [200, 200]
        assert expired.status_code == 503
        assert expired.headers["retry-after"] == "1"
        assert "time-to-live" in expired.json()["error"]["message"]


def test_flow_control_in_the_proxy_serves_a_higher_band_first(tmp_path: Path) -> None:
    """Issue 26 through the real LiteLLM proxy: with both engines busy, two batch requests
    queue in the picker (its admin API, asked for, counts them), then two interactive ones;
    when the engines free, the interactive ones are dispatched first (FIFO would serve batch
    first), so both end (~100 ms answers) before either batch one (~500 ms)."""
    admin = free_port()
    env = {"LLM_PICKER_FLOW__ENABLED": "true", "LLM_PICKER_FLOW__TRUST_CLIENT_HEADERS": "true",
           "LLM_PICKER_FLOW__OBJECTIVES": "{interactive: 10, batch: -1}",
           "LLM_PICKER_FLOW__SATURATION__MAX_IN_FLIGHT_PER_WORKER": "1",
           "LLM_PICKER_ADMIN__ENABLED": "true", "LLM_PICKER_ADMIN__PORT": str(admin)}
    with proxy(tmp_path, env) as (url, sims, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)

        def chat(client: httpx.Client, band: str, max_tokens: int) -> tuple[int, float]:
            status = client.post("/v1/chat/completions", headers={
                "authorization": f"Bearer {MASTER_KEY}",
                "x-gateway-inference-fairness-id": band,
                "x-gateway-inference-objective": band}, json={
                "model": "my-model", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "hi"}]}).status_code
            return status, time.monotonic()

        def queued(priority: str) -> float:
            return sum(value for labels, value in
                       metrics_at(f"http://127.0.0.1:{admin}", "llm_picker_flow_queued").items()
                       if ("priority", priority) in labels)

        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(6) as pool:
            busy = [pool.submit(chat, client, "interactive", 1000) for _ in range(2)]  # ~2 s
            wait_until(lambda: sum(running(spec) for spec in sims) == 2, 10,
                       "both engines busy")
            batch = [pool.submit(chat, client, "batch", 250) for _ in range(2)]
            wait_until(lambda: queued("-1") == 2, 10, "both batch requests queued")
            interactive = [pool.submit(chat, client, "interactive", 50) for _ in range(2)]
            wait_until(lambda: queued("10") == 2, 10, "both interactive requests queued")
            first = [f.result() for f in interactive]
            later = [f.result() for f in batch]
            assert [f.result()[0] for f in busy] == [200, 200]
    assert [status for status, _ in first + later] == [200] * 4
    assert max(end for _, end in first) < min(end for _, end in later)


def running(spec: SimSpec) -> float:
    """The sim's own count of requests running (vLLM's gauge)."""
    text = loopback().get(f"http://127.0.0.1:{spec.port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_grpc_deployments_through_the_provider_chosen_by_the_picker(tmp_path: Path) -> None:
    """examples/litellm/grpc.yaml: two gRPC sims as `llm-picker-grpc` deployments (their
    tokenizer fetched with GetTokenizer), the picker choosing round robin among them."""
    directory = build_tokenizer_dir(tmp_path / "tok", "llama-3.1")
    env = {"LLM_PICKER_POLICY__NAME": "round_robin", "LLM_PICKER_EXPLAIN__ENABLED": "true",
           "LLM_PICKER_EXPLAIN__ALLOW_HEADER": "true"}
    with proxy(tmp_path, env, GRPC_CONFIG, ["--grpc", "--tokenizer", str(directory)]) as (
            url, _, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=MASTER_KEY, max_retries=0,
                               default_headers={"x-llm-picker-explain": "1"})
        messages = [{"role": "user", "content": "say café"}]
        prompt = len(load_tokenizer(str(directory)).body_ids({"messages": messages}))
        chosen = Counter()
        for _ in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model="my-model", messages=messages, max_tokens=5)
            answer = raw.parse()
            assert answer.choices[0].message.content == expected_text(directory, 5)
            assert answer.choices[0].finish_reason == "length"
            assert answer.usage is not None
            assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt, 5)
            chosen[raw.headers["x-llm-picker-explain"].split("worker=", 1)[1].split(";")[0]] += 1
        assert chosen == {"grpc-a": 2, "grpc-b": 2}  # the picker's round robin, over gRPC
        stream = client.chat.completions.create(
            model="my-model", messages=messages, max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            expected_text(directory, 8)
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (prompt, 8)
        # A request the engine's Generate call cannot carry: the provider's 400, named.
        refused = loopback().post(f"{url}/v1/chat/completions", timeout=30, headers={
            "authorization": f"Bearer {MASTER_KEY}"}, json={
            "model": "my-model", "messages": messages, "n": 2})
        assert refused.status_code == 400 and "n must be 1" in refused.text


def test_a_stream_the_client_leaves_before_its_first_chunk_releases_its_slot(
        tmp_path: Path) -> None:
    """LiteLLM reports neither success nor failure for a stream cut before its end (its
    streaming path re-raises the cancellation before the deferred logging: litellm 1.106.12,
    litellm/proxy/utils.py:4351-4357 and 4432): the picker's
    streaming hook releases the slot, which was otherwise held until limits.timeout_secs and,
    with flow control, kept new requests queued."""
    admin = free_port()
    env = {"LLM_PICKER_ADMIN__ENABLED": "true", "LLM_PICKER_ADMIN__PORT": str(admin)}
    with proxy(tmp_path, env, sim_args=["--ttft-ms", "1500"]) as (url, _, process):
        wait_http(process, f"{url}/health/liveliness", timeout=90)

        def in_flight() -> float:
            return sum(metrics_at(f"http://127.0.0.1:{admin}",
                                  "llm_picker_worker_in_flight").values())

        body = json.dumps({"model": "my-model", "stream": True, "max_tokens": 5,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                             b"authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
                             b"content-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                # routed; left before the engine's first token (1.5 s), as curl -m does
                wait_until(lambda: in_flight() > 0, 10, "the call routed")
        wait_until(lambda: in_flight() == 0, 5, "every slot released")
