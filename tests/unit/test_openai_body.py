"""OpenAI bodies -> RoutingRequest: every API, every malformed input, and a fuzzer."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picker.errors import InvalidRequest, RequestError, UnsupportedMediaType, UnsupportedPath
from picker.routing.openai_body import parse_request
from picker.routing.request import Api

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
PATHS = [CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS, MESSAGES, "/rerank", "/v1/score"]


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def chat(*messages: object, **fields: object) -> bytes:
    return body(model="m", messages=list(messages), **fields)


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


GOOD = [
    ("chat", CHAT, chat({"role": "system", "content": "S"}, user("hi")), Api.CHAT,
     "\x00system\x00S\x00user\x00hi"),
    ("chat-query-and-slash", CHAT + "/?api-version=1", chat(user("hi")), Api.CHAT,
     "\x00user\x00hi"),
    ("chat-parts", CHAT, chat(user([{"type": "text", "text": "look"},
                                    {"type": "image_url", "image_url": {"url": "u://a"}}])),
     Api.CHAT, '\x00user\x00look\x01[image_url:{"url":"u://a"}]'),
    ("chat-audio", CHAT, chat(user([{"type": "input_audio",
                                     "input_audio": {"data": "QUJD", "format": "wav"}}])),
     Api.CHAT, '\x00user\x00[input_audio:{"data":"QUJD","format":"wav"}]'),
    ("chat-tool-call", CHAT, chat({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}), Api.CHAT,
     '\x00assistant\x00[{"function":{"arguments":"{}","name":"f"},"id":"c1","type":"function"}]'
     "\x00tool\x0042"),
    ("chat-name", CHAT, chat({"role": "user", "name": "bob", "content": "hi"}), Api.CHAT,
     "\x00user\x02bob\x00hi"),
    ("chat-empty", CHAT, chat(), Api.CHAT, ""),
    ("chat-utf8-bom", CHAT, b"\xef\xbb\xbf" + chat(user("hi")), Api.CHAT, "\x00user\x00hi"),
    ("chat-emoji-escape", CHAT, chat(user("\U0001f600")), Api.CHAT, "\x00user\x00\U0001f600"),
    ("completions", COMPLETIONS, body(model="m", prompt="once upon"), Api.COMPLETIONS,
     "once upon"),
    ("completions-strings", COMPLETIONS, body(model="m", prompt=["a", "b"]), Api.COMPLETIONS,
     "a\x01b"),
    ("completions-tokens", COMPLETIONS + "/", body(model="m", prompt=[1, 2, 3]),
     Api.COMPLETIONS, "1 2 3"),
    ("completions-token-lists", COMPLETIONS, body(model="m", prompt=[[1, 2], [3]]),
     Api.COMPLETIONS, "1 2\x013"),
    ("completions-empty-list", COMPLETIONS, body(model="m", prompt=[]), Api.COMPLETIONS, ""),
    ("responses-string", RESPONSES, body(model="m", input="hello", instructions="be brief"),
     Api.RESPONSES, "\x00instructions\x00be brief\x00user\x00hello"),
    ("responses-items", RESPONSES, body(model="m", input=[user([
        {"type": "input_text", "text": "yo"},
        {"type": "input_image", "image_url": "https://x/i.png", "detail": "low"}])]),
     Api.RESPONSES, '\x00user\x00yo\x01[input_image:{"detail":"low","image_url":"https://x/i.png"}]'),
    ("responses-function-items", RESPONSES, body(model="m", input=[
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "42"}]), Api.RESPONSES,
     '\x00function_call\x00{"arguments":"{}","call_id":"c","name":"f"}'
     '\x00function_call_output\x00{"call_id":"c","output":"42"}'),
    ("responses-null-instructions", RESPONSES, body(model="m", input="x", instructions=None),
     Api.RESPONSES, "\x00user\x00x"),
    ("embeddings", EMBEDDINGS, body(model="m", input="x"), Api.EMBEDDINGS, "x"),
    ("embeddings-strings", EMBEDDINGS, body(model="m", input=["x", "y"]), Api.EMBEDDINGS,
     "x\x01y"),
    ("embeddings-tokens", EMBEDDINGS, body(model="m", input=[7, 8]), Api.EMBEDDINGS, "7 8"),
    ("embeddings-token-lists", EMBEDDINGS, body(model="m", input=[[7], [8, 9]]),
     Api.EMBEDDINGS, "7\x018 9"),
]


@pytest.mark.parametrize(("path", "raw", "api", "text"), [case[1:] for case in GOOD],
                         ids=[case[0] for case in GOOD])
def test_good_bodies(path: str, raw: bytes, api: Api, text: str) -> None:
    request = parse_request(path, raw, {})
    assert request.model == "m"
    assert request.api is api
    assert request.prompt_text == text
    assert request.stream is False
    assert request.session_key is None
    assert (request.messages is not None) == (api is Api.CHAT)


def test_stream_session_key_and_headers() -> None:
    raw = chat(stream=True, user="alice")
    headers = {"x-session-id": "s1", "x-other": "v"}
    request = parse_request(CHAT, raw, headers)
    assert request.stream is True
    assert request.session_key == "s1"
    assert request.headers is headers
    assert parse_request(CHAT, raw, {}).session_key == "alice"
    assert parse_request(CHAT, raw, {"x-session-id": ""}).session_key == "alice"
    assert parse_request(CHAT, chat(user=""), {}).session_key is None
    assert parse_request(CHAT, chat(user=None, stream=None), {}).stream is False


def test_shared_system_prompt_and_first_turn_give_a_shared_text_prefix() -> None:
    system = {"role": "system", "content": "You are a pirate. " * 20}
    first_turn = user("Tell me about ships.")
    first = parse_request(CHAT, chat(system, first_turn, user("hello")), {}).prompt_text
    second = parse_request(CHAT, chat(system, first_turn, user("goodbye")), {}).prompt_text
    common = os.path.commonprefix([first, second])
    assert len(common) > len(system["content"]) + len("Tell me about ships.")
    assert first != second


def test_equal_prompts_give_equal_text_whatever_the_json_layout() -> None:
    compact = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    spaced = b'{ "messages" : [ {"content": "hi", "role": "user"} ], "model": "m" }'
    assert parse_request(CHAT, compact, {}).prompt_text == \
        parse_request(CHAT, spaced, {}).prompt_text
    # A Responses string input reads as the same user turn as its item form.
    assert parse_request(RESPONSES, body(model="m", input="hi"), {}).prompt_text == \
        parse_request(RESPONSES, body(model="m", input=[user("hi")]), {}).prompt_text


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([user("ab")], [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]),
        ([user("ab")], [user("a"), user("b")]),
        ([user("hi")], [{"role": "assistant", "content": "hi"}]),
        ([user("hi")], [{"role": "user", "name": "x", "content": "hi"}]),
    ],
    ids=["string-vs-parts", "one-vs-two-messages", "roles", "name"],
)
def test_different_messages_give_different_text(
    left: list[object], right: list[object]
) -> None:
    assert parse_request(CHAT, chat(*left), {}).prompt_text != \
        parse_request(CHAT, chat(*right), {}).prompt_text


def test_large_inline_data_is_hashed_deterministically() -> None:
    def audio(data: str) -> bytes:
        return chat(user([{"type": "input_audio", "input_audio": {"data": data}}]))

    first, second = (parse_request(CHAT, audio("A" * 5000), {}).prompt_text for _ in range(2))
    assert first == second
    assert "blake2b:" in first
    assert len(first) < 100
    assert parse_request(CHAT, audio("B" * 5000), {}).prompt_text != first


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD = [
    # The body as a whole.
    ("empty", CHAT, b"", None, "empty"),
    ("invalid-json", CHAT, b"{nope", None, "invalid JSON: Expecting property name"),
    ("invalid-json-position", CHAT, b'{"model": "m",\n "x": }', None, "line 2 column 7 (char 21)"),
    ("trailing-data", CHAT, b"{} {}", None, "Extra data"),
    ("not-utf8", CHAT, b'{"model": "\xff"}', None, "not UTF-8"),
    ("utf16", CHAT, chat().decode().encode("utf-16"), None, "not UTF-8"),
    ("array", CHAT, b"[1]", None, "not an array"),
    ("number", CHAT, b"42", None, "not a number"),
    ("string", CHAT, b'"s"', None, "not a string"),
    ("null", CHAT, b"null", None, "not null"),
    ("deeply-nested", CHAT, DEEP, None, "nested too deeply"),
    ("deeply-nested-inside", CHAT, b'{"model":"m","messages":' + DEEP + b"}", None,
     "nested too deeply"),
    ("huge-number", COMPLETIONS, b'{"model":"m","prompt":[' + b"9" * 5000 + b"]}", None,
     "too many digits"),
    ("nan", COMPLETIONS, b'{"model":"m","prompt":[NaN]}', None, "NaN is not a JSON value"),
    # model
    ("model-missing", CHAT, body(messages=[]), "model", "'model' is required"),
    ("model-null", CHAT, body(model=None, messages=[]), "model", "not null"),
    ("model-number", CHAT, body(model=5, messages=[]), "model", "must be a string, not a number"),
    ("model-empty", CHAT, body(model="", messages=[]), "model", "'model' is empty"),
    ("model-too-long", CHAT, body(model="m" * 10_000, messages=[]), "model",
     "10000 characters long; the limit is 256"),
    ("model-lone-surrogate", CHAT, body(model="m\ud800", messages=[]), "model",
     "unpaired UTF-16 surrogate"),
    # stream, user
    ("stream-string", CHAT, chat(stream="yes"), "stream", "must be a boolean, not a string"),
    ("stream-number", CHAT, chat(stream=1), "stream", "must be a boolean, not a number"),
    ("user-number", CHAT, chat(user=7), "user", "must be a string, not a number"),
    # chat messages
    ("messages-missing", CHAT, body(model="m"), "messages", "'messages' is required"),
    ("messages-string", CHAT, body(model="m", messages="hi"), "messages",
     "must be an array, not a string"),
    ("message-number", CHAT, chat(user("a"), 3), "messages[1]", "must be an object, not a number"),
    ("role-missing", CHAT, chat({"content": "hi"}), "messages[0].role", "is required"),
    ("role-number", CHAT, chat({"role": 1}), "messages[0].role", "must be a string"),
    ("name-number", CHAT, chat({"role": "user", "name": 1}), "messages[0].name",
     "must be a string"),
    ("content-number", CHAT, chat(user(5)), "messages[0].content",
     "a string, an array of content parts or null, not a number"),
    ("content-object", CHAT, chat(user({"text": "hi"})), "messages[0].content", "not an object"),
    ("part-string", CHAT, chat(user(["hi"])), "messages[0].content[0]",
     "must be an object, not a string"),
    ("part-without-type", CHAT, chat(user([{"text": "hi"}])), "messages[0].content[0].type",
     "must be a string, not null"),
    ("text-part-number", CHAT, chat(user([{"type": "text", "text": 5}])),
     "messages[0].content[0].text", "must be a string, not a number"),
    ("content-lone-surrogate", CHAT, chat(user("a\udc00b")), "messages",
     "unpaired UTF-16 surrogate escape ('\\udc00')"),
    # completions / embeddings
    ("prompt-missing", COMPLETIONS, body(model="m"), "prompt", "'prompt' is required"),
    ("prompt-object", COMPLETIONS, body(model="m", prompt={"a": 1}), "prompt", "not an object"),
    ("prompt-null", COMPLETIONS, body(model="m", prompt=None), "prompt", "not null"),
    ("prompt-ints-then-string", COMPLETIONS, body(model="m", prompt=[1, "a"]), "prompt",
     "array of token ids (integers) throughout"),
    ("prompt-strings-then-int", COMPLETIONS, body(model="m", prompt=["a", 1]), "prompt",
     "array of strings throughout"),
    ("prompt-bad-token-list", COMPLETIONS, body(model="m", prompt=[[1], [2, "x"]]), "prompt",
     "arrays of token ids"),
    ("prompt-booleans", COMPLETIONS, body(model="m", prompt=[True]), "prompt", "token ids"),
    ("prompt-floats", COMPLETIONS, body(model="m", prompt=[1.5]), "prompt", "token ids"),
    ("input-missing", EMBEDDINGS, body(model="m"), "input", "'input' is required"),
    ("input-null", EMBEDDINGS, body(model="m", input=None), "input", "not null"),
    ("input-bool", EMBEDDINGS, body(model="m", input=True), "input", "not a boolean"),
    # responses
    ("instructions-number", RESPONSES, body(model="m", input="x", instructions=3),
     "instructions", "must be a string, not a number"),
    ("responses-input-missing", RESPONSES, body(model="m"), "input", "'input' is required"),
    ("responses-input-null", RESPONSES, body(model="m", input=None), "input", "not null"),
    ("responses-input-number", RESPONSES, body(model="m", input=1), "input",
     "must be a string or an array of items, not a number"),
    ("responses-item-untyped", RESPONSES, body(model="m", input=[{"content": "x"}]),
     "input[0].role", "is required"),
    ("responses-part-text-null", RESPONSES, body(model="m", input=[user(
        [{"type": "input_text"}])]), "input[0].content[0].text", "must be a string, not null"),
]


@pytest.mark.parametrize(("path", "raw", "param", "fragment"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_bodies_name_what_is_wrong(
    path: str, raw: bytes, param: str | None, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(path, raw, {})
    assert caught.value.param == param
    assert fragment in caught.value.message
    assert caught.value.status == 400
    assert len(caught.value.message) < 300  # never echoes large input


def test_anthropic_messages_read_as_the_engine_renders_them() -> None:
    """System first (blocks joined, Claude Code's per-request billing block dropped, as vLLM
    does; system-role messages hoisted into it): the same text as the equal chat request."""
    anthropic = parse_request(MESSAGES, body(
        model="m", max_tokens=5, stream=True,
        system=[{"type": "text", "text": "x-anthropic-billing-header: cch=1;"},
                {"type": "text", "text": "You are "}, {"type": "text", "text": "helpful."}],
        messages=[{"role": "system", "content": " Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "hi"}]}]), {})
    same = parse_request(CHAT, chat({"role": "system", "content": "You are helpful. Be brief."},
                                    user("hi")), {})
    assert anthropic.api is Api.MESSAGES and anthropic.stream
    assert anthropic.prompt_text == same.prompt_text
    count = parse_request("/v1/messages/count_tokens",
                          body(model="m", system="S", messages=[user("hi")]), {})
    assert count.api is Api.COUNT_TOKENS and count.api.anthropic and not Api.CHAT.anthropic
    assert count.prompt_text == parse_request(
        CHAT, chat({"role": "system", "content": "S"}, user("hi")), {}).prompt_text


@pytest.mark.parametrize(("raw", "param", "fragment"), [
    (body(model="m", messages="hi"), "messages", "must be an array"),
    (body(model="m"), "messages", "'messages' is required"),
    (body(model="m", system=5, messages=[]), "system", "string or an array of content blocks"),
    (body(model="m", system=["x"], messages=[]), "system[0]", "must be an object"),
    (body(model="m", messages=[{"role": "system", "content": 3}]), "messages[0].content",
     "string or an array of content blocks"),
])
def test_bad_anthropic_bodies_name_the_field(raw: bytes, param: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(MESSAGES, raw, {})
    assert (caught.value.param, fragment in caught.value.message) == (param, True)


def test_anthropic_errors_have_anthropic_shape() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(MESSAGES, b"{", {})
    error = json.loads(caught.value.to_json(anthropic=True))
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "invalid JSON" in error["error"]["message"]


@pytest.mark.parametrize(("path", "fields", "api", "text"), [
    ("/v1/rerank", {"query": "q", "documents": ["a", "b"]}, Api.RERANK, "q"),
    ("/rerank/", {"query": "q", "documents": []}, Api.RERANK, "q"),
    ("/v2/rerank", {"query": {"content": [{"type": "text", "text": "q"}]}, "documents": []},
     Api.RERANK, '{"content":[{"text":"q","type":"text"}]}'),
    ("/v1/score", {"text_1": "q", "text_2": ["a"]}, Api.SCORE, "q"),
    ("/score", {"queries": ["q", "r"], "documents": ["a", "b"]}, Api.SCORE, "q\x01r"),
    ("/score", {"data_1": "q", "data_2": "a"}, Api.SCORE, "q"),
    ("/v1/score", {"query": [1, 2], "items": [[3]]}, Api.SCORE, "1 2"),  # SGLang's token ids
])
def test_rerank_and_score_are_read_by_their_query(path: str, fields: dict[str, object],
                                                   api: Api, text: str) -> None:
    request = parse_request(path, body(model="m", **fields), {})
    assert (request.api, request.prompt_text) == (api, text)


@pytest.mark.parametrize(("path", "fields", "param"), [
    ("/v1/rerank", {"documents": []}, "query"),
    ("/v1/rerank", {"query": 3}, "query"),
    ("/v1/score", {"text_2": "a"}, "queries"),
    ("/v1/score", {"text_1": ["q", None]}, "text_1[1]"),
])
def test_bad_rerank_and_score_bodies_name_the_field(path: str, fields: dict[str, object],
                                                    param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(path, body(model="m", **fields), {})
    assert caught.value.param == param


@pytest.mark.parametrize("path", ["/v1/models", "/", "", "/v2/chat/completions",
                                  "/v1/chat/completions/x", "/x" * 500],
                         ids=["models", "root", "empty", "v2", "sub-path", "huge"])
def test_unsupported_paths(path: str) -> None:
    with pytest.raises(UnsupportedPath) as caught:
        parse_request(path, chat(), {})
    assert caught.value.status == 404
    assert repr(path[:100]) in caught.value.message or repr(path[:100])[:-1] in \
        caught.value.message
    assert len(caught.value.message) < 300


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json", ""])
def test_json_content_types_are_accepted(content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert parse_request(CHAT, chat(), headers).model == "m"


def test_other_content_types_are_415() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        parse_request(CHAT, b"model=m", {"content-type": "application/x-www-form-urlencoded"})
    assert caught.value.status == 415


# -- fuzzing: any bytes, any JSON in any field -> a RoutingRequest or a RequestError -----------

# Text including lone surrogates, which json.dumps sends as \udXXX escapes.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
# Values shaped like real content, so the fuzzer also reaches the parts and items parsers.
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "input_text", "image_url", "input_image", "input_audio"])},
    optional={"text": json_values, "image_url": json_values, "input_audio": json_values})
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]) | json_values},
    optional={"content": texts | st.lists(parts | json_values, max_size=3) | json_values,
              "name": json_values, "tool_calls": json_values, "type": json_values}), max_size=3)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_routable_or_refused(path: str, raw: bytes) -> None:
    try:
        request = parse_request(path, raw, {})
    except RequestError:
        return
    # What is accepted is valid Unicode, so tokenizers and JSON encoders downstream cope.
    request.model.encode()
    request.prompt_text.encode()


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(PATHS))
def test_arbitrary_bytes_only_raise_request_errors(raw: bytes, path: str) -> None:
    assert_routable_or_refused(path, raw)


@FUZZ
@given(json_values, json_values,
       st.sampled_from(["messages", "prompt", "input", "query", "queries", "text_1"]),
       json_values, st.sampled_from(PATHS))
def test_arbitrary_json_only_raises_request_errors(
    model: object, value: object, key: str, extra: object, path: str
) -> None:
    fields = {"model": model, key: value, "instructions": extra, "stream": extra, "user": extra}
    assert_routable_or_refused(path, json.dumps(fields).encode())


@FUZZ
@given(messages, st.sampled_from(["messages", "input"]), st.sampled_from([CHAT, RESPONSES]))
def test_message_shaped_json_only_raises_request_errors(
    value: list[object], key: str, path: str
) -> None:
    assert_routable_or_refused(path, json.dumps({"model": "m", key: value}).encode())


# -- the fast parser (msgspec) accepts exactly what the standard library accepts, identically --

def stdlib_body(raw: bytes) -> object:
    """The body as `json` alone decodes it (strict UTF-8, no NaN), or None if it refuses."""
    def refuse(name: str) -> object:
        raise ValueError(name)

    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def assert_parsed_like_stdlib(raw: bytes) -> None:
    expected = stdlib_body(raw)
    try:
        parsed = parse_request(COMPLETIONS, raw, {}).body
    except InvalidRequest:
        parsed = None
    if parsed is not None or not isinstance(expected, dict) or expected.get("model") != "m":
        # repr tells 1 from 1.0 and keeps key order, which == does not
        assert repr(parsed) == repr(expected)


@pytest.mark.parametrize("raw", [
    b'{"model":"m","prompt":"p","big":' + b"1" * 30 + b"}",  # beyond 64 bits: still an int
    b'{"model":"m","prompt":"p","x":1e400}',  # msgspec refuses; json gives inf
    b'{"model":"m","prompt":"p","x":"\\ud800"}',  # lone surrogate outside the prompt
    b'{"model":"m","prompt":"p","x":"\\ud83d\\ude00"}',
    b'\xef\xbb\xbf{"model":"m","prompt":"p"}',  # BOM
    b'{"model":"m","prompt":"p","x":1,"x":2.0}',  # duplicate keys: the last wins
    b'{"model":"m","prompt":"p","x":"a\nb"}',  # raw control character: refused by both
    b'{"model":"m","prompt":"p","x":[1,]}',
    b'{"model":"m","prompt":"p","x":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
    b' \t\r\n{"model":"m","prompt":"p","x":-0.0E+2}\n',
], ids=["huge-int", "float-overflow", "lone-surrogate", "pair", "bom", "duplicate-keys",
        "control-char", "trailing-comma", "encoded-surrogate", "whitespace-and-exponent"])
def test_fast_parser_agrees_with_stdlib(raw: bytes) -> None:
    assert_parsed_like_stdlib(raw)


@FUZZ
@given(json_values, st.booleans())
def test_fast_parser_agrees_with_stdlib_on_any_json(value: object, ascii_only: bool) -> None:
    raw = json.dumps({"model": "m", "prompt": "p", "x": value}, ensure_ascii=ascii_only)
    assert_parsed_like_stdlib(raw.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary(max_size=60))
def test_fast_parser_agrees_with_stdlib_on_any_bytes(tail: bytes) -> None:
    assert_parsed_like_stdlib(b'{"model":"m","prompt":"p","x":' + tail)


@pytest.mark.parametrize(("raw_value", "field", "fragment"), [
    (b"1e999", "max_tokens", "out of range"),  # json reads it as infinity
    (b"-1e999", "max_completion_tokens", "out of range"),
    (b"2.5", "max_tokens", "2.5"),
    (b'"10"', "max_tokens", "string"),
    (b"true", "n", "boolean"),
    (b"1e999", "seed", "out of range"),
])
def test_integer_fields_refuse_what_is_no_integer(raw_value: bytes, field: str,
                                                  fragment: str) -> None:
    raw = b'{"model": "m", "messages": [], "%s": %s}' % (field.encode(), raw_value)
    with pytest.raises(InvalidRequest) as caught:
        parse_request("/v1/chat/completions", raw, {})
    assert caught.value.param == field and caught.value.status == 400
    assert "must be an integer" in caught.value.message and fragment in caught.value.message


@pytest.mark.parametrize("raw_value", [b"100", b"100.0", b"null", b"0"])
def test_integer_fields_take_whole_numbers_and_null(raw_value: bytes) -> None:
    raw = b'{"model": "m", "messages": [], "max_tokens": %s}' % raw_value
    assert parse_request("/v1/chat/completions", raw, {}).model == "m"


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan", "1e999", ""])
def test_a_malformed_slo_header_is_a_400_whatever_the_policy(value: str) -> None:
    """Parsed before any policy runs: round_robin's clients learn of the typo too."""
    raw = b'{"model": "m", "messages": []}'
    with pytest.raises(InvalidRequest) as caught:
        parse_request("/v1/chat/completions", raw, {"x-slo-ttft-ms": value})
    assert caught.value.param == "x-slo-ttft-ms" and caught.value.status == 400
    assert parse_request("/v1/chat/completions", raw, {"x-slo-ttft-ms": "250"}).model == "m"


@pytest.mark.parametrize("name", ["x-slo-ttft-ms", "x-llm-d-slo-ttft-ms"])  # llm-d's alias
def test_the_slo_header_is_read_once_in_seconds_under_either_name(name: str) -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert parse_request("/v1/chat/completions", raw, {name: "250"}).slo_ttft_secs == 0.25
    with pytest.raises(InvalidRequest) as caught:
        parse_request("/v1/chat/completions", raw, {name: "soon"})
    assert caught.value.param == "x-slo-ttft-ms"
    assert parse_request("/v1/chat/completions", raw, {}).slo_ttft_secs is None
