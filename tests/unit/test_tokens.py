"""Engine-exact tokenization (picker/tokens): token ids equal transformers' for the published
chat templates of five models, and the loading rules of a tokenizer directory.

The oracle is transformers' own `apply_chat_template` (a dev dependency only), given the
conversation vLLM builds from the OpenAI request (picker/tokens/conversation.py cites the rules):
that is what a vLLM engine tokenizes, so equal ids here mean the picker's KV-block hashes can
match the engine's.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from picker.errors import ConfigError, InvalidRequest
from picker.tokens import EngineTokenizer, load_tokenizer
from picker_bench.tokenizer_dirs import FAMILIES, build_tokenizer_dir, sample_text


def _oracle_tokenizer(directory: Path) -> Any:
    """transformers' tokenizer for `directory`; transformers is imported here, when a test
    needs it, not when every pytest-xdist worker collects this module (~1 s of CPU each)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(directory))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_temperature",
    "description": "Get the current temperature at a location.",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The location, as City, Country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
# vLLM hands templates `tool.model_dump()`: description and parameters present, null if absent.
BARE_TOOL = {"type": "function", "function": {"name": "get_time"}}
BARE_TOOL_DUMPED = {"type": "function", "function": {"name": "get_time", "description": None,
                                                      "parameters": None}}
CALL = {"id": "abc123def", "type": "function", "function": {
    "name": "get_current_temperature", "arguments": '{"location": "Paris, France"}'}}
CALL_DECODED = {**CALL, "function": {**CALL["function"],
                                     "arguments": {"location": "Paris, France"}}}

# (request messages, tools) -> (the conversation vLLM renders, the tools it renders)
CASES: dict[str, tuple[list[dict[str, Any]], list[Any] | None,
                       list[dict[str, Any]], list[Any] | None]] = {
    "system_user": (
        [{"role": "system", "content": "you are a helpful assistant"},
         {"role": "user", "content": "what is the weather in Paris today?"}], None,
        [{"role": "system", "content": "you are a helpful assistant"},
         {"role": "user", "content": "what is the weather in Paris today?"}], None),
    "multi_turn": (
        [{"role": "user", "content": "Hello how are you doing"},
         {"role": "assistant", "content": "great, how can I help?"},
         {"role": "user", "content": "show off how chat templates work"}], None,
        [{"role": "user", "content": "Hello how are you doing"},
         {"role": "assistant", "content": "great, how can I help?"},
         {"role": "user", "content": "show off how chat templates work"}], None),
    "text_parts_joined": (
        [{"role": "user", "content": [{"type": "text", "text": "the weather"},
                                      {"type": "text", "text": ""},
                                      {"type": "text", "text": "in Paris?"}]}], None,
        [{"role": "user", "content": "the weather\nin Paris?"}], None),
    "tools_and_tool_turns": (
        [{"role": "user", "content": "what is the temperature in Paris?"},
         {"role": "assistant", "content": None, "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "abc123def",
          "content": [{"type": "text", "text": "22"}, {"type": "text", "text": "celsius"}]},
         {"role": "user", "content": "and tomorrow?"}], [WEATHER_TOOL, BARE_TOOL],
        [{"role": "user", "content": "what is the temperature in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [CALL_DECODED]},
         {"role": "tool", "tool_call_id": "abc123def", "content": "22\ncelsius"},
         {"role": "user", "content": "and tomorrow?"}], [WEATHER_TOOL, BARE_TOOL_DUMPED]),
}
# The openai content format keeps parts as parts (Qwen2.5-VL loops over them).
PARTS_AS_PARTS = [{"role": "user", "content": [{"type": "text", "text": "the weather"},
                                               {"type": "text", "text": "in Paris?"}]}]

# A template's own refusal: Mistral Nemo wants strict user/assistant alternation, Llama 3.1
# a single tool call per turn, DeepSeek-R1 concatenates arguments as a string.
REFUSED = {("mistral-nemo", "tools_and_tool_turns"), ("deepseek-r1", "tools_and_tool_turns")}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {family: build_tokenizer_dir(root / family, family) for family in FAMILIES}


def _as_parts(message: dict[str, Any]) -> dict[str, Any]:
    """A message as vLLM hands it to an openai-format template: text as a list of parts
    (none for empty text), except a tool result, which stays one string."""
    if message["role"] == "tool":
        return message
    text = message["content"]
    return {**message, "content": [{"type": "text", "text": text}] if text else []}


def _oracle(directory: Path, conversation: list[dict[str, Any]], tools: list[Any] | None,
            **kwargs: Any) -> list[int]:
    tokenizer = _oracle_tokenizer(directory)
    ids: list[int] = tokenizer.apply_chat_template(
        copy.deepcopy(conversation), tools=copy.deepcopy(tools), add_generation_prompt=True,
        tokenize=True, return_dict=False, **kwargs)
    return ids


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_chat_ids_equal_transformers(dirs: dict[str, Path], family: str, case: str) -> None:
    messages, tools, conversation, rendered_tools = CASES[case]
    if family == "qwen2.5-vl":
        if case == "text_parts_joined":
            pytest.skip("an openai-format template: test_parts_stay_parts covers it")
        conversation = [_as_parts(m) for m in conversation]
    mine = load_tokenizer(str(dirs[family]))
    if (family, case) in REFUSED:
        with pytest.raises(Exception):  # noqa: B017 - transformers raises the template's own
            _oracle(dirs[family], conversation, rendered_tools)
        with pytest.raises(InvalidRequest, match="chat template refused"):
            mine.chat_ids(messages, tools=tools)
        return
    expected = _oracle(dirs[family], conversation, rendered_tools)
    assert mine.chat_ids(copy.deepcopy(messages), tools=tools) == expected


def test_every_family_renders_tools_or_refuses_as_its_template_does() -> None:
    """The table above is not all refusals: tools render for three of the five families."""
    rendering = {f for f in FAMILIES if (f, "tools_and_tool_turns") not in REFUSED}
    assert rendering == {"llama-3.1", "qwen2.5", "qwen2.5-vl"}


def test_parts_stay_parts_for_a_template_that_loops_over_them(dirs: dict[str, Path]) -> None:
    mine = load_tokenizer(str(dirs["qwen2.5-vl"]))
    assert mine.template_for(tools=False).content_format == "openai"
    assert load_tokenizer(str(dirs["qwen2.5"])).template_for(tools=False).content_format == \
        "string"
    expected = _oracle(dirs["qwen2.5-vl"], PARTS_AS_PARTS, None)
    assert mine.chat_ids(PARTS_AS_PARTS) == expected
    # Joined, the same text would be other tokens: the format matters.
    joined = [{"role": "user", "content": "the weather\nin Paris?"}]
    assert _oracle(dirs["qwen2.5-vl"], joined, None) != expected


def test_template_variables_from_the_request(dirs: dict[str, Path]) -> None:
    """chat_template_kwargs reach the template when it reads them (Llama 3.1's date_string),
    and add_generation_prompt false leaves the assistant header out."""
    mine = load_tokenizer(str(dirs["llama-3.1"]))
    messages = [{"role": "user", "content": "what is the weather?"}]
    body = {"model": "m", "messages": messages, "add_generation_prompt": False,
            "chat_template_kwargs": {"date_string": "01 Jan 2026", "not_a_template_var": 1}}
    tokenizer = _oracle_tokenizer(dirs["llama-3.1"])
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=False,
                                             date_string="01 Jan 2026", tokenize=True,
                                             return_dict=False)
    assert mine.body_ids(body) == expected
    assert mine.body_ids({**body, "chat_template_kwargs": {}}) != expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_completion_ids_equal_transformers(dirs: dict[str, Path], family: str) -> None:
    """A completion prompt is encoded with the special tokens tokenizer.json's post-processor
    adds (BOS for Llama 3, Mistral, DeepSeek; none for Qwen), as vLLM's default does."""
    mine = load_tokenizer(str(dirs[family]))
    tokenizer = _oracle_tokenizer(dirs[family])
    rng = random.Random(7)
    for words in (1, 12, 300):
        prompt = sample_text(rng, words) + " <|im_end|> [INST]"
        assert mine.body_ids({"model": "m", "prompt": prompt}) == tokenizer(prompt)["input_ids"]
        assert mine.body_ids({"model": "m", "prompt": prompt, "add_special_tokens": False}) == \
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
    spec = FAMILIES[family]
    with_bos = mine.encode("x", add_special_tokens=True)
    if spec.bos_on_encode:
        assert with_bos[0] == tokenizer.convert_tokens_to_ids(spec.named["bos_token"])
    else:
        assert with_bos == mine.encode("x", add_special_tokens=False)


def test_tokens_only_the_config_declares_are_added(dirs: dict[str, Path]) -> None:
    """Qwen's <tool_call> lives in tokenizer_config.json only; transformers adds it, so the
    engine sees one token where tokenizer.json alone would see several."""
    text = "call <tool_call> now"
    with_config = load_tokenizer(str(dirs["qwen2.5"]))
    alone = load_tokenizer(str(dirs["qwen2.5"] / "tokenizer.json"))
    tokenizer = _oracle_tokenizer(dirs["qwen2.5"])
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert with_config.encode(text, add_special_tokens=False) == expected
    assert alone.encode(text, add_special_tokens=False) != expected


def _copy_dir(source: Path, target: Path, config: dict[str, Any]) -> Path:
    target.mkdir()
    (target / "tokenizer.json").write_text((source / "tokenizer.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


def test_named_templates_and_template_files(dirs: dict[str, Path], tmp_path: Path) -> None:
    """A list of named templates picks tool_use for a request with tools; a
    chat_template.jinja file replaces the config's templates (transformers' precedence)."""
    source = dirs["qwen2.5"]
    config = json.loads((source / "tokenizer_config.json").read_text())
    # Block tags on lines of their own: trim_blocks and lstrip_blocks decide the whitespace.
    default = "D\n{% for m in messages %}\n  {% if m.role == 'user' %}\n{{ m.content }}\n  " \
              "{% endif %}\n{% endfor %}"
    tool_use = "T{{ tools | length if tools else 0 }}"
    config["chat_template"] = [{"name": "default", "template": default},
                               {"name": "tool_use", "template": tool_use}]
    named = _copy_dir(source, tmp_path / "named", config)
    mine = load_tokenizer(str(named))
    tokenizer = _oracle_tokenizer(named)
    messages = [{"role": "user", "content": "hello"}]
    for tools in (None, [WEATHER_TOOL]):
        assert mine.chat_ids(messages, tools=tools) == tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=False)
    assert mine.chat_text(messages) == "D\nhello\n"
    assert mine.chat_text(messages, tools=[WEATHER_TOOL]) == "T1"
    assert load_tokenizer(str(named), chat_template="tool_use").chat_text(messages) == "T0"
    (named / "chat_template.jinja").write_text("F{{ eos_token }}")
    assert load_tokenizer(str(named)).chat_text(messages, tools=[WEATHER_TOOL]) == "F<|im_end|>"
    override = tmp_path / "override.jinja"
    override.write_text("O{{ messages | length }}")
    assert load_tokenizer(str(named), chat_template=str(override)).chat_text(messages) == "O1"


def test_loading_errors_name_the_key(tmp_path: Path, dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="no tokenizer.json") as caught:
        load_tokenizer(str(tmp_path), key="workers[0].tokenizer")
    assert caught.value.key == "workers[0].tokenizer.path"
    config = json.loads((dirs["qwen2.5"] / "tokenizer_config.json").read_text())
    broken = _copy_dir(dirs["qwen2.5"], tmp_path / "broken",
                       {**config, "chat_template": "{% for m in messages %}"})
    with pytest.raises(ConfigError, match="template 'default'") as caught:
        load_tokenizer(str(broken))
    assert caught.value.key == "prefix.tokenizer.chat_template"


def test_malformed_messages_are_400s_naming_the_field(dirs: dict[str, Path]) -> None:
    mine: EngineTokenizer = load_tokenizer(str(dirs["qwen2.5"]))
    for messages, field in (
            ([{"content": "x"}], "messages[0].role"),
            ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
             "messages[0].content[0]"),
            ([{"role": "user", "content": 3}], "messages[0].content"),
            ([], "messages")):
        with pytest.raises(InvalidRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
            mine.chat_ids(messages)


def test_vllm_message_rules_reach_the_template(dirs: dict[str, Path], tmp_path: Path) -> None:
    """Reasoning under every name templates read, a Claude Code billing line dropped from the
    system prompt, invalid tool arguments as {}, an empty tool_calls list dropped, strict kept
    on a tool only when set: the rendered text equals transformers' on vLLM's conversation."""
    source = dirs["qwen2.5"]
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.reasoning_content }}|"
        "{{ m.thinking }}|{{ m.tool_calls | tojson if m.tool_calls is defined else '-' }}\n"
        "{% endfor %}{{ tools | tojson }}")
    directory = _copy_dir(source, tmp_path / "rules", config)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "x-anthropic-billing-header: "
                                        "cch=1\nyou are a helpful assistant"}]},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi", "reasoning_content": "think step",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "assistant", "content": "done", "tool_calls": []}]
    tools = [{"type": "function", "function": {"name": "f", "strict": True}}, BARE_TOOL]
    conversation = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi", "reasoning": "think step",
         "reasoning_content": "think step",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": {}}}]},
        {"role": "assistant", "content": "done"}]
    rendered_tools = [{"type": "function", "function": {"name": "f", "description": None,
                                                         "parameters": None, "strict": True}},
                      BARE_TOOL_DUMPED]
    tokenizer = _oracle_tokenizer(directory)
    expected = tokenizer.apply_chat_template(conversation, tools=rendered_tools, tokenize=False,
                                             add_generation_prompt=True)
    assert "think step|think step|" in expected and "billing" not in expected
    assert load_tokenizer(str(directory)).chat_text(messages, tools=tools) == expected


@pytest.mark.parametrize("expression", [
    "m.role", "m.content", "m.missing is defined", "m.missing | default('d')",
    "m.items() | list | length", "m.get('role')", "m.keys() | list | join(',')",
    "m.tool_calls[0].function.name", "m.update is defined", "m.__class__ is defined",
    "m.pop is defined", "m.values | string | length > 0", "(m.role ~ '!') | upper",
])
def test_attribute_lookup_on_dicts_is_jinjas(expression: str) -> None:
    """The template sandbox looks `message.role` up on a plain dict without Jinja's
    AttributeError round trip; what a template sees is what Jinja's own immutable sandbox
    (transformers' renderer) gives, dict methods and unsafe names included."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from picker.tokens import ChatTemplate

    source = "{{ " + expression + " }}"
    message = {"role": "user", "content": "hi", "tool_calls": [CALL_DECODED]}
    stock = ImmutableSandboxedEnvironment().from_string(source).render(m=message)
    assert ChatTemplate("{% set m = messages[0] %}" + source).render([message]) == stock


def test_dict_methods_stay_unsafe_to_call() -> None:
    from picker.tokens import ChatTemplate, TemplateProblem

    with pytest.raises(TemplateProblem, match="unsafe"):
        ChatTemplate("{{ messages[0].pop('role') }}").render([{"role": "user"}])
    with pytest.raises(TemplateProblem, match="unsafe"):
        ChatTemplate("{{ messages[0].update({'a': 1}) }}").render([{"role": "user"}])
