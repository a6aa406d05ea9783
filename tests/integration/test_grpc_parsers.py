"""Tool-call and reasoning parsers on the gRPC router, end to end: real Envoy (the gateway
configuration), the picker, and `llm-picker sim --grpc` processes whose output is a fixed
model text (`--output-text`): the client gets `reasoning_content` and `tool_calls`, streamed
and not, and, for Qwen, the same answer the real SMG gateway gives for the same output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_GATEWAY, Fleet, SimSpec, local_fleet, start_sims
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.integration.conftest import FAST_HEALTH
from tests.integration.test_grpc_route import events, grpc_sim, post
from tests.integration.test_grpc_sim import post_until_served, smg_gateway

QWEN_TEXT = ('<think>the user wants the weather</think>\n\n<tool_call>\n{"name": "get_weather", '
             '"arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>')
DS_TEXT = ("the user wants the weather</think>Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
           'function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>'
           "<｜tool▁calls▁end｜>")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string"}}}}}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
# (model, tokenizer family, output, worker parsers, what the client gets)
MODELS = {
    "qwen-model": ("qwen2.5", QWEN_TEXT, {"tool_parser": "qwen", "reasoning_parser": "qwen3"},
                   ("the user wants the weather", None,
                    '{"city":"Paris","unit":"celsius"}')),
    "ds-model": ("deepseek-r1", DS_TEXT,
                 {"tool_parser": "deepseek", "reasoning_parser": "deepseek_r1"},
                 ("the user wants the weather", "Checking.", '{"city":"Paris"}')),
}


def parser_sim(model: str, directory: Path) -> SimSpec:
    _, text, parsers, _ = MODELS[model]
    spec = grpc_sim(model, directory, "--output-text", text)
    spec.model, spec.worker = model, {**spec.worker, **parsers}
    return spec


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    return {model: build_tokenizer_dir(root / model, family)
            for model, (family, *_) in MODELS.items()}


@pytest.fixture(scope="module")
def fleet(tokenizer_dirs: dict[str, Path]) -> Iterator[Fleet]:
    sims = [parser_sim(model, directory) for model, directory in tokenizer_dirs.items()]
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH}) as fleet:
        yield fleet


def chat(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 400,
            "stream": stream, **extra}


def merged(chunks: list[Any]) -> tuple[dict[str, Any], str | None]:
    """A streamed answer's message, its deltas joined (tool calls by index)."""
    reasoning, content, calls, reason = "", "", {}, None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                into = calls.setdefault(call["index"], {"function": {"arguments": ""}})
                into.update({k: v for k, v in call.items() if k in ("id", "type")})
                function = call.get("function") or {}
                if function.get("name"):
                    into["function"]["name"] = function["name"]
                into["function"]["arguments"] += function.get("arguments") or ""
            reason = choice["finish_reason"] or reason
    message = {"role": "assistant", "content": content.strip() and content or None,
               "tool_calls": [calls[i] for i in sorted(calls)],
               "reasoning_content": reasoning or None}
    return message, reason


def normalised(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what may differ between gateways (tool call ids), with absent and
    null fields alike."""
    calls = [{**call, "id": call["id"][:5]} for call in message.get("tool_calls") or []]
    return {"content": message.get("content"), "reasoning_content":
            message.get("reasoning_content"), "tool_calls": calls}


def expected(model: str) -> dict[str, Any]:
    reasoning, content, arguments = MODELS[model][3]
    return {"content": content, "reasoning_content": reasoning, "tool_calls": [
        {"id": "call_", "type": "function",
         "function": {"name": "get_weather", "arguments": arguments}}]}


@pytest.mark.parametrize("model", list(MODELS))
def test_a_tool_call_reaches_the_client_as_tool_calls(fleet: Fleet, model: str) -> None:
    response = post(fleet, "/v1/chat/completions", chat(model))
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert normalised(choice["message"]) == expected(model)
    assert choice["finish_reason"] == "tool_calls"
    streamed = post(fleet, "/v1/chat/completions", chat(model, stream=True))
    chunks = events(streamed)
    message, reason = merged(chunks)
    assert normalised(message) == expected(model) and reason == "tool_calls"
    # OpenAI's streamed shape: the call's index, id, type and name, then its arguments.
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [sorted(d) for d in deltas] == [["function", "id", "index", "type"],
                                           ["function", "index"]]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert deltas[1]["function"] == {"arguments": MODELS[model][3][2]}


def test_without_tools_the_text_is_content_and_reasoning(fleet: Fleet) -> None:
    body = chat("qwen-model")
    del body["tools"]
    message = post(fleet, "/v1/chat/completions", body).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "the user wants the weather"
    assert message["content"] == QWEN_TEXT.split("</think>")[1] and "tool_calls" not in message


def test_smg_gives_the_same_answer_for_the_same_output(
        fleet: Fleet, tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The real SMG gateway with the same parsers, on its own sim with the same output."""
    spec = parser_sim("qwen-model", tokenizer_dirs["qwen-model"])
    [sim] = start_sims([spec], tmp_path)
    try:
        with smg_gateway(["--worker-urls", f"grpc://127.0.0.1:{spec.port}"], tmp_path,
                         "--tool-call-parser", "qwen", "--reasoning-parser", "qwen3") as smg:
            theirs = post_until_served(f"{smg}/v1/chat/completions", chat("qwen-model"))
            ours = post(fleet, "/v1/chat/completions", chat("qwen-model")).json()
            assert normalised(ours["choices"][0]["message"]) == \
                normalised(theirs["choices"][0]["message"])
            assert ours["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"]
            # Only the output's count: with `tools` the two render different prompts (SMG 1.13
            # 345 tokens, the picker 327 for this chat), the tokenizer's concern, not the parsers'.
            assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"]
            streamed = loopback().post(f"{smg}/v1/chat/completions", timeout=10,
                                       json=chat("qwen-model", stream=True))
            smg_events = [json.loads(line[6:]) for line in streamed.text.splitlines()
                          if line.startswith("data: {")]
            our_events = events(post(fleet, "/v1/chat/completions",
                                     chat("qwen-model", stream=True)))
            ours_merged, theirs_merged = merged(our_events), merged(smg_events)
            assert normalised(ours_merged[0]) == normalised(theirs_merged[0])
            assert ours_merged[1] == theirs_merged[1]
    finally:
        sim.stop()
