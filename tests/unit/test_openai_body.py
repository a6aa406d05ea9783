"""OpenAI bodies -> RoutingRequest: every API, every malformed input, and a fuzzer."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.errors import InvalidRequest, RequestError, UnsupportedMediaType, UnsupportedPath
from picker.openai_body import parse_request
from picker.request import Api

CHAT = "/v1/chat/completions"


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("path", "raw", "api", "text_fragment"),
    [
        (CHAT, body(model="m", messages=[{"role": "user", "content": "hi"}]), Api.CHAT, "hi"),
        (CHAT + "?x=1", body(model="m", messages=[
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "u://a"}}]}
        ]), Api.CHAT, "u://a"),
        ("/v1/completions", body(model="m", prompt="once upon"), Api.COMPLETIONS, "once upon"),
        ("/v1/completions/", body(model="m", prompt=[1, 2, 3]), Api.COMPLETIONS, "1 2 3"),
        ("/v1/completions", body(model="m", prompt=["a", "b"]), Api.COMPLETIONS, "a"),
        ("/v1/completions", body(model="m", prompt=[[1, 2], [3]]), Api.COMPLETIONS, "1 2"),
        ("/v1/responses", body(model="m", input="hello", instructions="be brief"),
         Api.RESPONSES, "be brief"),
        ("/v1/responses", body(model="m", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "yo"}]}]), Api.RESPONSES, "yo"),
        ("/v1/embeddings", body(model="m", input=["x", "y"]), Api.EMBEDDINGS, "y"),
    ],
    ids=["chat", "chat-parts", "completion", "tokens", "prompts", "token-lists",
         "responses-str", "responses-items", "embeddings"],
)
def test_good_bodies(path: str, raw: bytes, api: Api, text_fragment: str) -> None:
    request = parse_request(path, raw, {})
    assert request.model == "m"
    assert request.api is api
    assert text_fragment in request.prompt_text
    assert request.stream is False


def test_stream_and_session_key() -> None:
    raw = body(model="m", messages=[], stream=True, user="alice")
    assert parse_request(CHAT, raw, {}).session_key == "alice"
    assert parse_request(CHAT, raw, {"x-session-id": "s1"}).session_key == "s1"
    assert parse_request(CHAT, raw, {}).stream is True


def test_shared_system_prompt_gives_a_shared_text_prefix() -> None:
    system = {"role": "system", "content": "You are a pirate. " * 20}
    first = parse_request(CHAT, body(model="m", messages=[
        system, {"role": "user", "content": "hello"}]), {}).prompt_text
    second = parse_request(CHAT, body(model="m", messages=[
        system, {"role": "user", "content": "goodbye"}]), {}).prompt_text
    common = os.path.commonprefix([first, second])
    assert len(common) > len(system["content"])
    assert first != second


def test_prompt_text_is_deterministic() -> None:
    raw = body(model="m", messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "A" * 5000}}]}])
    first, second = (parse_request(CHAT, raw, {}).prompt_text for _ in range(2))
    assert first == second
    assert len(first) < 200  # large inline data is hashed, not copied


@pytest.mark.parametrize(
    ("path", "raw", "param", "fragment"),
    [
        (CHAT, b"", None, "empty"),
        (CHAT, b"{nope", None, "invalid JSON"),
        (CHAT, b"\xff\xfe{}", None, "invalid JSON"),
        (CHAT, b"[1]", None, "an array"),
        (CHAT, b"42", None, "a number"),
        (CHAT, b'"s"', None, "a string"),
        (CHAT, b"[" * 100_000 + b"]" * 100_000, None, "invalid JSON"),
        (CHAT, body(messages=[]), "model", "required"),
        (CHAT, body(model="", messages=[]), "model", "1 to 256"),
        (CHAT, body(model=5, messages=[]), "model", "a number"),
        (CHAT, body(model="m" * 10_000, messages=[]), "model", "1 to 256"),
        (CHAT, body(model="m"), "messages", "required"),
        (CHAT, body(model="m", messages="hi"), "messages", "array"),
        (CHAT, body(model="m", messages=[3]), "messages[0]", "object"),
        (CHAT, body(model="m", messages=[{"role": 1}]), "messages[0].role", "string"),
        (CHAT, body(model="m", messages=[{"role": "u", "content": 5}]),
         "messages[0].content", "string or an array"),
        (CHAT, body(model="m", messages=[{"role": "u", "content": [7]}]),
         "messages[0].content[0]", "object"),
        (CHAT, body(model="m", messages=[], stream="yes"), "stream", "boolean"),
        ("/v1/completions", body(model="m"), "prompt", "required"),
        ("/v1/completions", body(model="m", prompt=[1, "a"]), "prompt", "token ids"),
        ("/v1/completions", body(model="m", prompt={"a": 1}), "prompt", "an object"),
        ("/v1/embeddings", body(model="m", input=None), "input", "got null"),
        ("/v1/embeddings", body(model="m"), "input", "required"),
        ("/v1/responses", body(model="m", input="x", instructions=3), "instructions", "string"),
    ],
)
def test_bad_bodies_name_what_is_wrong(
    path: str, raw: bytes, param: str | None, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(path, raw, {})
    assert caught.value.param == param
    assert fragment in caught.value.message
    assert len(caught.value.message) < 300  # never echoes large input


@pytest.mark.parametrize("path", ["/v1/models", "/", "/v2/chat/completions", "/x" * 500])
def test_unsupported_paths(path: str) -> None:
    with pytest.raises(UnsupportedPath) as caught:
        parse_request(path, body(model="m", messages=[]), {})
    assert caught.value.status == 404
    assert len(caught.value.message) < 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["/v1/chat/completions", "/v1/completions",
                                                 "/v1/responses", "/v1/embeddings"]))
def test_arbitrary_bytes_only_raise_request_errors(raw: bytes, path: str) -> None:
    with contextlib.suppress(RequestError):
        parse_request(path, raw, {})


@settings(max_examples=300, deadline=None)
@given(json_values, json_values, st.sampled_from(["messages", "prompt", "input"]),
       st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses",
                        "/v1/embeddings"]))
def test_arbitrary_json_only_raises_request_errors(
    model: object, value: object, key: str, path: str
) -> None:
    raw = json.dumps({"model": model, key: value, "instructions": value}).encode()
    try:
        request = parse_request(path, raw, {})
    except RequestError:
        return
    assert isinstance(request.prompt_text, str)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/vnd.api+json", ""])
def test_json_content_types_are_accepted(content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert parse_request(CHAT, body(model="m", messages=[]), headers).model == "m"


def test_other_content_types_are_415() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        parse_request(CHAT, b"model=m", {"content-type": "application/x-www-form-urlencoded"})
    assert caught.value.status == 415
