"""Tokenizers for the prefix index: configuration rules, hf files, the remote /tokenize."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest

from picker.config import PickerConfig, load_config
from picker.errors import ConfigError, NoHealthyWorker
from picker.fleet.registry import Worker
from picker.fleet.worker_spec import WorkerSpec
from picker.prefix.producer import PrefixProducer, PrefixSettings
from picker.prefix.tokenizers import RemoteTokenizer, TokenizerSettings, load_hf_tokenizer
from picker.routing.openai_body import parse_request
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime
from picker.tokens import MediaPart, load_tokenizer
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from picker_bench.workload import make_workload
from picker_sim.engine import prompt_tokens, token_ids
from picker_sim.hf_twin import write_hf_twin
from tests.sim_thread import running_sim


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [
        ({"kind": "remote"}, "endpoint"),
        ({"kind": "hf"}, "tokenizer.json"),
        ({"kind": "sentencepiece"}, "character"),
    ],
)
def test_configuration_rules_at_start_up(tmp_path: Path, tokenizer: dict[str, str],
                                         message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"prefix": {"enabled": True, "tokenizer": tokenizer}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key.startswith("prefix.tokenizer") and message in str(caught.value)


def test_missing_or_broken_hf_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        load_hf_tokenizer(str(tmp_path / "absent.json"))
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not a tokenizer")
    with pytest.raises(ConfigError) as caught:
        load_hf_tokenizer(str(broken))
    assert caught.value.key == "prefix.tokenizer.path"


def hf_file(tmp_path: Path) -> str:
    """A real tokenizer.json, trained here (no model download needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [f"word{i}" for i in range(200)]
    tokenizer.train_from_iterator([" ".join(words)],
                                  trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


def test_hf_tokenizer_blocks_are_token_blocks(tmp_path: Path) -> None:
    settings = PrefixSettings(enabled=True, block_size=4,
                              tokenizer=TokenizerSettings(kind="hf", path=hf_file(tmp_path)))
    producer = PrefixProducer(settings)
    text = " ".join(f"word{i}" for i in range(40))
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text=text)
    annotated, prompt = producer.annotate(request, [])
    assert prompt.is_tokens
    assert len(prompt.hashes(4)) == 10  # 40 tokens / 4, where characters would give 70 blocks
    assert annotated.prefix is not None and annotated.prefix.total_blocks == 10


def test_remote_tokenizer_matches_the_engine_and_falls_back_only_when_allowed() -> None:
    messages = [{"role": "user", "content": "alpha beta gamma"}]
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="x", messages=messages)
    with running_sim() as url:
        remote = RemoteTokenizer(TokenizerSettings(kind="remote", endpoint=url))
        tokens = asyncio.run(remote.tokens(request))
        assert tokens == token_ids(prompt_tokens({"messages": messages}))
    dead = TokenizerSettings(kind="remote", endpoint="http://127.0.0.1:1", retries=1)
    with pytest.raises(NoHealthyWorker):
        asyncio.run(RemoteTokenizer(dead).tokens(request))
    lenient = RemoteTokenizer(dead.model_copy(update={"fallback": True}))
    assert asyncio.run(lenient.tokens(request)) is None and lenient.failures == 1


async def test_route_awaits_the_tokenizer_and_counts_fallbacks() -> None:
    runtime = PickerRuntime(PickerConfig.model_validate({
        "workers": [{"url": "a:1", "models": ["m"]}], "policy": "prefix_cache",
        "prefix": {"enabled": True, "tokenizer": {
            "kind": "remote", "endpoint": "http://127.0.0.1:1", "retries": 0,
            "fallback": True}}}))
    assert runtime.routing.awaits
    lease = await runtime.routing.route(RoutingRequest(model="m", api=Api.COMPLETIONS,
                                               prompt_text="p"))
    assert lease.worker.url == "http://a:1"
    assert "llm_picker_tokenizer_fallbacks_total 1.0" in runtime.metrics.render().decode()


def test_under_kv_events_a_fallback_prompt_uses_the_approximate_index() -> None:
    """Engines report token ids, so a prompt the tokenizer could not cut (fallback to
    characters) can match nothing they hold; it is matched against the picker's own history
    instead, and that history never leaks into token matches."""
    settings = PrefixSettings(enabled=True, index="kv_events", block_size=8,
                              tokenizer=TokenizerSettings(kind="remote",
                                                          endpoint="http://127.0.0.1:1",
                                                          fallback=True))
    producer = PrefixProducer(settings)
    a, b = Worker(WorkerSpec(url="a:1", id="a")), Worker(WorkerSpec(url="b:1", id="b"))
    by_chars = RoutingRequest(model="m", api=Api.COMPLETIONS, prompt_text="x" * 80)
    first, prompt = producer.annotate(by_chars, [a, b])
    assert first.prefix is not None and first.prefix.matched == {}
    producer.record(prompt, b)
    again, _ = producer.annotate(by_chars, [a, b])
    assert again.prefix is not None and again.prefix.matched == {"b": 10}
    by_tokens = replace(by_chars, tokens=[7] * 80)
    tokens, _ = producer.annotate(by_tokens, [a, b])
    assert tokens.prefix is not None and tokens.prefix.matched == {}


def test_hf_chat_template_is_applied_to_messages(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}word1 {{ m['content'] }} {% endfor %}"
                        "{% if add_generation_prompt %}word2{% endif %}")
    tokenizer = load_hf_tokenizer(hf_file(tmp_path), str(template))
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="ignored",
                             messages=[{"role": "user", "content": "word7 word8"}])
    plain = load_hf_tokenizer(hf_file(tmp_path))
    expected = plain.units(RoutingRequest(model="m", api=Api.CHAT,
                                          prompt_text="word1 word7 word8 word2"))
    assert tokenizer.units(request) == expected
    with pytest.raises(ConfigError, match="chat_template"):
        load_hf_tokenizer(hf_file(tmp_path), str(tmp_path / "absent.jinja"))


def test_the_hf_twin_yields_the_simulators_token_ids(tmp_path: Path) -> None:
    """The KV-event benchmarks tokenize in the picker with this file; a mismatch with the sims'
    ids would silently turn every prefix match into a miss."""
    workload = make_workload(groups=4, system_tokens=200, conversations=2)
    settings = write_hf_twin((word for body in workload.bodies for word in prompt_tokens(body)),
                             tmp_path)
    tokenizer = load_hf_tokenizer(settings["path"], settings["chat_template"])
    for body in workload.bodies:
        request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="ignored",
                                 messages=body["messages"])
        assert tokenizer.units(request) == token_ids(prompt_tokens(body))


def test_kv_event_blocks_of_a_chat_with_tools_match_the_engines(tmp_path: Path) -> None:
    """The engine stores KV blocks of the token ids it computed (here transformers', as vLLM
    computes them); an hf prefix tokenizer given the model's directory cuts the same chat,
    parsed from its JSON body with its tools, into the same blocks, so every full block
    matches. Before picker/tokens the template rendered without bos_token and tools: none did."""
    transformers = pytest.importorskip("transformers")
    directory = build_tokenizer_dir(tmp_path / "llama", "llama-3.1")
    tool = {"type": "function", "function": {"name": "get_current_temperature",
                                             "description": "temperature at a location",
                                             "parameters": {"type": "object"}}}
    messages = [{"role": "system", "content": "you are a helpful assistant"},
                {"role": "user", "content": [{"type": "text", "text": "the weather"},
                                             {"type": "text", "text": "in Paris today?"}]}]
    engine_ids = transformers.AutoTokenizer.from_pretrained(str(directory)).apply_chat_template(
        [messages[0], {"role": "user", "content": "the weather\nin Paris today?"}],
        tools=[tool], add_generation_prompt=True, tokenize=True, return_dict=False)
    block = 8
    full = len(engine_ids) // block
    assert full >= 10
    producer = PrefixProducer(PrefixSettings(
        enabled=True, index="kv_events",
        tokenizer=TokenizerSettings(kind="hf", path=str(directory))))
    producer.sync_index().stored("a", [f"h{i}" for i in range(full)], None,
                                 engine_ids[:full * block], block)
    body = json.dumps({"model": "m", "messages": messages, "tools": [tool]}).encode()
    request = parse_request("/v1/chat/completions", body, {})
    annotated, prompt = producer.annotate(request, [Worker(WorkerSpec(url="a:1", id="a"))])
    assert list(prompt.units) == engine_ids
    assert annotated.prefix is not None and annotated.prefix.matched == {"a": full}


def test_hf_prefix_tokenizer_routes_an_image_chat_on_its_text(tmp_path: Path) -> None:
    """The engine alone turns an image into tokens: the picker routes such a chat on its text
    (no prefix match) instead of refusing it; picker/tokens itself refuses it, naming the part."""
    directory = build_tokenizer_dir(tmp_path / "vl", "qwen2.5-vl")
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "what is the weather"}]}]
    request = parse_request("/v1/chat/completions",
                            json.dumps({"model": "m", "messages": messages}).encode(), {})
    tokenizer = load_hf_tokenizer(str(directory))
    assert tokenizer.units(request) == tokenizer.units(replace(request, api=Api.RESPONSES))
    with pytest.raises(MediaPart, match=r"messages\[0\].content\[0\]: .* type 'image_url'"):
        load_tokenizer(str(directory)).body_ids(request.body or {})
