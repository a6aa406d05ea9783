"""LiteLLM's SDK with the gRPC provider (litellm_plugin.grpc_provider), in this process, against
`llm-picker sim --grpc` processes: the engine's text and usage, streamed and not, the engine's
tokenizer fetched when litellm_params names none, an abandoned stream aborted at the engine, and
bad litellm_params named in the error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from litellm_plugin.grpc_provider import engines
from picker.tokens import load_tokenizer
from picker_bench.stack import Process, SimSpec, start_sims
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.integration.test_grpc_route import expected_text, grpc_sim
from tests.waiting import eventually

MESSAGES = [{"role": "user", "content": "say café"}]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen", "qwen2.5")


@pytest.fixture(scope="module")
def sim(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[SimSpec, Process]]:
    spec = grpc_sim("g1", tokenizer_dir)
    (process,) = start_sims([spec], tmp_path_factory.mktemp("sim"))
    yield spec, process
    process.stop()


@pytest.fixture(autouse=True)
def provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "custom_provider_map",
                        [{"provider": "llm-picker-grpc", "custom_handler": engines}])
    litellm.utils.custom_llm_setup()


def ask(sim: tuple[SimSpec, Process], **params: Any) -> dict[str, Any]:
    return {"model": "llm-picker-grpc/sim-model", "messages": MESSAGES,
            "api_base": f"grpc://127.0.0.1:{sim[0].port}", **params}


async def test_a_chat_answer_is_the_engines_text_and_usage(
        sim: tuple[SimSpec, Process], tokenizer_dir: Path) -> None:
    response = await litellm.acompletion(**ask(sim, tokenizer_path=str(tokenizer_dir),
                                               max_tokens=6))
    prompt = len(load_tokenizer(str(tokenizer_dir)).body_ids({"messages": MESSAGES}))
    assert response.choices[0].message.content == expected_text(tokenizer_dir, 6)
    assert response.choices[0].finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt, 6)


async def test_a_streamed_answer_carries_the_engines_usage(
        sim: tuple[SimSpec, Process], tokenizer_dir: Path) -> None:
    """No tokenizer_path: the provider fetches the engine's own with GetTokenizer."""
    stream = await litellm.acompletion(**ask(sim, max_tokens=9, stream=True,
                                             stream_options={"include_usage": True}))
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(tokenizer_dir, 9)
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == ["length"]
    usage = chunks[-1].usage
    prompt = len(load_tokenizer(str(tokenizer_dir)).body_ids({"messages": MESSAGES}))
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, 9)


def test_the_synchronous_api_is_served_too(sim: tuple[SimSpec, Process],
                                           tokenizer_dir: Path) -> None:
    response = litellm.completion(**ask(sim, tokenizer_path=str(tokenizer_dir), max_tokens=3))
    assert response.choices[0].message.content == expected_text(tokenizer_dir, 3)
    stream = litellm.completion(**ask(sim, tokenizer_path=str(tokenizer_dir), max_tokens=4,
                                      stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == expected_text(tokenizer_dir, 4)


async def test_a_stream_the_caller_leaves_is_aborted_at_the_engine(
        sim: tuple[SimSpec, Process], tokenizer_dir: Path) -> None:
    stream = await litellm.acompletion(**ask(sim, tokenizer_path=str(tokenizer_dir),
                                             max_tokens=2000, stream=True,
                                             litellm_call_id="left-1"))
    async for _ in stream:
        break
    await stream.completion_stream.aclose()
    await eventually(lambda: "Abort 'left-1' (client disconnected)" in sim[1].log_tail(200),
                     what="the sim's Abort line")
    whole = await litellm.acompletion(**ask(sim, tokenizer_path=str(tokenizer_dir),
                                            max_tokens=2, litellm_call_id="whole-1"))
    assert whole.choices[0].finish_reason == "length"
    assert "'whole-1'" not in sim[1].log_tail(200)  # an answer that ended needs no Abort


@pytest.mark.parametrize(("params", "named"), [
    ({"api_base": "http://127.0.0.1:1"}, "litellm_params.api_base"),
    ({"api_base": "grpc://127.0.0.1"}, "litellm_params.api_base"),
    ({"tokenizer_path": "/nonexistent"}, "litellm_params.tokenizer_path"),
    ({"tool_parser": "nonsense"}, "litellm_params.tool_parser"),
])
async def test_bad_litellm_params_are_named(sim: tuple[SimSpec, Process],
                                            params: dict[str, Any], named: str) -> None:
    with pytest.raises(litellm.exceptions.BadRequestError if "api_base" in params
                       or "tool_parser" in params else litellm.exceptions.ServiceUnavailableError,
                       match=named.replace(".", r"\.")):
        await litellm.acompletion(**{**ask(sim), **params})


def test_the_readme_shows_the_grpc_example_as_the_proxy_test_runs_it() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "litellm" / "grpc.yaml"
    readme = example.parents[2] / "README.md"
    assert "model_list:" + example.read_text().split("model_list:", 1)[1] in readme.read_text()


def test_a_vllm_deployment_is_called_over_vllms_service(tokenizer_dir: Path,
                                                       tmp_path: Path) -> None:
    """litellm_params `runtime_type: vllm`: vLLM's Generate (its chunks' delta counts summed)
    and its GetTokenizer, through the same provider."""
    spec = grpc_sim("v1", tokenizer_dir, runtime="vllm")
    (process,) = start_sims([spec], tmp_path)
    try:
        chunks = list(litellm.completion(**ask((spec, process), runtime_type="vllm",
                                               max_tokens=7, stream=True,
                                               stream_options={"include_usage": True})))
    finally:
        process.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(tokenizer_dir, 7)
    assert chunks[-1].usage.completion_tokens == 7
