"""The real LiteLLM proxy with `litellm_plugin.proxy_hook`, driven by the openai client."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from picker_bench.stack import SimSpec, free_port, spawn, start_sim, wait_http

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "litellm" / "config.yaml"
MASTER_KEY = "sk-llm-picker-example"  # the example's general_settings.master_key
SERVED_BY = "llm_provider-x-picker-sim-worker"  # the sim's header, as LiteLLM forwards it


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("proxy")
    sims = [SimSpec(name, "my-model") for name in ("A", "B")]
    procs = [start_sim(spec, workdir) for spec in sims]
    port = free_port()
    # The example names the README's sim ports; these sims run on free ports instead.
    config = workdir / "config.yaml"
    config.write_text(CONFIG.read_text().replace("127.0.0.1:8001", f"127.0.0.1:{sims[0].port}")
                      .replace("127.0.0.1:8002", f"127.0.0.1:{sims[1].port}"))
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LLM_PICKER_POLICY__NAME": "round_robin",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # spawn() passes the environment on
    try:
        litellm_cli = Path(sys.executable).parent / "litellm"
        proxy = spawn("litellm-proxy", [str(litellm_cli), "--config", str(config), "--host",
                                        "127.0.0.1", "--port", str(port)], workdir)
        procs.append(proxy)
        wait_http(proxy, f"http://127.0.0.1:{port}/health/liveliness", timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in procs:
            proc.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
