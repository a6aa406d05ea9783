"""OpenAI-style request bodies -> RoutingRequest.

This runs on every routed request, so it is one msgspec parse straight from the body's bytes
and dict lookups (no model classes). msgspec rejects everything the standard library rejects
and more (a lone surrogate escape, a float overflowing to infinity); only then is the body
parsed again by `json`, which either accepts it as before or gives the error message clients
have always seen. Every malformed input becomes InvalidRequest naming the field (`param`);
nothing else escapes, whatever the bytes.

`prompt_text` is what the engine sees first, in order, so equal prompts give equal text and a
shared system prompt or shared first turns give a shared text prefix (what a prefix index
hashes). Its layout, with separators that do not occur in ordinary text:

    chat / responses   "\\0{role}\\0{content}" per message; parts of one content joined by
                       "\\1"; a participant `name` as "{role}\\2{name}"; tool calls and
                       non-message items as compact JSON; images, audio and files as
                       "[{type}:{url or data}]", hashed (blake2b) when longer than 256 chars
    completions        the prompt; strings or token id lists joined by "\\1", token ids as
    / embeddings       space-separated numbers
    messages           Anthropic's: rendered as the engines turn them into chat (below), so a
    / count_tokens     system prompt shared with chat requests gives the same text
    rerank / score     the query (what the cross-encoder reads first of every pair, so the
                       prefix documents share), a list of queries joined by "\\1", multimodal
                       inputs as compact JSON, SGLang's token ids as numbers

vLLM and SGLang serve Anthropic's Messages API by converting it to a chat request: `system` (a
string, or text blocks joined) becomes the first message, system-role messages in `messages`
are hoisted into it, and the other messages follow in order (vLLM
entrypoints/anthropic/serving.py, _convert_system_message and _convert_messages, at 0001948;
SGLang entrypoints/anthropic/serving.py, _convert_to_chat_completion_request, at 0198d48).
vLLM also drops text blocks starting `x-anthropic-billing-header` (Claude Code's per-request
hash, which would defeat prefix caching), and so does the prompt text here. SGLang joins
system blocks with a newline where vLLM joins them with nothing; the text here follows vLLM.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

import msgspec

from picker.errors import (
    InvalidRequest,
    MethodNotAllowed,
    UnsupportedMediaType,
    UnsupportedPath,
)
from picker.fleet.worker_spec import MAX_NAME_CHARS
from picker.routing import control_headers
from picker.routing.json_kind import json_type
from picker.routing.request import Api, RoutingRequest

__all__ = ["api_of", "parse_request", "request_from_data"]

# Every routed path: each API's own, and the other forms vLLM serves rerank and score at
# (vllm/entrypoints/pooling/scoring/api_router.py:29, :66 and :103 at facb56e; SGLang serves
# only the /v1 forms). The engine receives the path the client used.
_APIS = {**{api.value: api for api in Api},
         "/score": Api.SCORE, "/rerank": Api.RERANK, "/v2/rerank": Api.RERANK}
_ROLE = "\x00"
_PART = "\x01"
_NAME = "\x02"
_INLINE_LIMIT = 256
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# The field that carries the prompt, for errors about the prompt as a whole.
_PROMPT_PARAM = {Api.CHAT: "messages", Api.COMPLETIONS: "prompt", Api.RESPONSES: "input",
                 Api.EMBEDDINGS: "input", Api.MESSAGES: "messages",
                 Api.COUNT_TOKENS: "messages", Api.RERANK: "query", Api.SCORE: "queries"}
# Anthropic system text blocks vLLM leaves out of the prompt (see the module's docstring).
_BILLING_HEADER = "x-anthropic-billing-header"
# Count fields of the OpenAI APIs (and vLLM/SGLang's extras): `json` reads 1e999 as infinity
# (only the words Infinity/NaN reach parse_constant), and engines read these as integers.
_INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n", "seed",
                   "top_logprobs", "top_k", "min_tokens")


def _clip(value: str, limit: int = 100) -> str:
    """Never echo large client input back in an error."""
    return value if len(value) <= limit else value[:limit] + "..."


def api_of(path: str) -> Api | None:
    """The API a request path targets (query and trailing slashes ignored), if one is routed;
    adapters read it to answer errors in the API's own shape."""
    return _APIS.get(path.split("?", 1)[0].rstrip("/"))


def parse_request(path: str, body: bytes, headers: Mapping[str, str],
                  answer_seen: bool = True) -> RoutingRequest:
    """Route-relevant facts of one HTTP request; `headers` keys are lower-case.
    `answer_seen`: RoutingRequest.answer_seen."""
    api = api_of(path)
    if api is None:
        raise UnsupportedPath(f"the picker routes only {', '.join(_APIS)}; got {_clip(path)!r}")
    method = headers.get(":method", "POST")
    if method != "POST":
        raise MethodNotAllowed(f"{api.value} takes POST, not {_clip(method)}")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"content-encoding {_clip(encoding)!r} is not supported: "
                                   "send the body uncompressed")
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"content-type must be application/json, not {_clip(media_type)!r}")
    try:
        data = _FAST.decode(body)
    except (msgspec.DecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        # Malformed, or valid but not a plain JSON object: the standard library decides.
        request = request_from_data(api, _load_object(body), headers, answer_seen)
        # A lone surrogate can only come from a JSON escape (strict UTF-8 admits none), and
        # msgspec refuses those, so only bodies parsed here need the check.
        if b"\\ud" in body or b"\\uD" in body:
            _check_unicode(request)
        return request
    return request_from_data(api, data, headers, answer_seen)


def request_from_data(api: Api, data: Mapping[str, Any], headers: Mapping[str, str],
                      answer_seen: bool = True) -> RoutingRequest:
    """A request already decoded (LiteLLM hands over Python objects, not bytes)."""
    model = data.get("model")
    if not isinstance(model, str):
        if "model" not in data:
            raise InvalidRequest("'model' is required", param="model")
        raise InvalidRequest(f"'model' must be a string, not {json_type(model)}", param="model")
    if not model:
        raise InvalidRequest("'model' is empty", param="model")
    if len(model) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"'model' is {len(model)} characters long; the limit is {MAX_NAME_CHARS}",
            param="model")
    stream = data.get("stream")
    if stream is None:  # OpenAI's schema makes it nullable, meaning the default
        stream = False
    elif not isinstance(stream, bool):
        raise InvalidRequest(f"'stream' must be a boolean, not {json_type(stream)}",
                             param="stream")
    for field in _INTEGER_FIELDS:
        if field in data:
            _check_integer(data[field], field)
    slo = _slo_secs(headers)
    return RoutingRequest(
        model=model,
        api=api,
        prompt_text=_PROMPT_TEXT[api](data),
        stream=stream,
        session_key=_session_key(data, headers),
        headers=headers,
        messages=data["messages"] if api is Api.CHAT else None,
        body=data,
        slo_ttft_secs=slo,
        answer_seen=answer_seen,
    )


def _check_integer(value: object, field: str) -> None:
    """null (the default) or a whole number; 1e999 (infinity) and 2.5 are not."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return  # 100.0: engines' pydantic models take it as 100
    shown = "a number out of range" if isinstance(value, float) and not math.isfinite(value) \
        else f"{value!r}" if isinstance(value, float) else json_type(value)
    raise InvalidRequest(f"'{field}' must be an integer, not {shown}", param=field)


def _slo_secs(headers: Mapping[str, str]) -> float | None:
    """The TTFT target (only `weighted` acts on it), read once here and refused when malformed
    under every policy, so a client learns of its typo whichever policy serves it."""
    raw = control_headers.client_value(headers, control_headers.SLO_TTFT)
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        millis = math.nan
    if not 0 < millis < math.inf:
        raise InvalidRequest(f"{control_headers.SLO_TTFT} must be a positive number of "
                             f"milliseconds, got {_clip(raw, 50)!r}",
                             param=control_headers.SLO_TTFT)
    return millis / 1000


def _reject_constant(name: str) -> NoReturn:
    raise InvalidRequest(f"invalid JSON: {name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FAST = msgspec.json.Decoder()


def _load_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:  # RFC 8259: JSON exchanged between systems is UTF-8 (a BOM is tolerated)
        text = (body[3:] if body.startswith(codecs.BOM_UTF8) else body).decode()
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        ) from exc
    except ValueError as exc:  # int() refuses numbers of more than sys.get_int_max_str_digits()
        raise InvalidRequest("invalid JSON: a number has too many digits") from exc
    except RecursionError as exc:
        raise InvalidRequest("invalid JSON: nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {json_type(data)}")
    return data


def _check_unicode(request: RoutingRequest) -> None:
    for param, text in (("model", request.model),
                        (_PROMPT_PARAM[request.api], request.prompt_text)):
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"'{param}' contains an unpaired UTF-16 surrogate escape"
                f" ({text[exc.start]!a}); text must be valid Unicode", param=param) from exc


def _session_key(data: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    header = headers.get("x-session-id")
    if header:
        return header
    user = data.get("user")
    if user is None or isinstance(user, str):
        return user or None
    raise InvalidRequest(f"'user' must be a string, not {json_type(user)}", param="user")


def _json_text(value: object, param: str) -> str:
    """Compact, key-sorted JSON: deterministic text for structured content."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"'{param}' is not JSON-encodable or nested too deeply",
                             param=param) from exc


def _marker(kind: str, payload: object, param: str) -> str:
    """A short stable stand-in for non-text content (images, audio): same input, same marker."""
    text = payload if isinstance(payload, str) else _json_text(payload, param)
    if len(text) > _INLINE_LIMIT:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16)
        text = "blake2b:" + digest.hexdigest()
    return f"[{kind}:{text}]"


def _part_text(part: object, param: str) -> str:
    """One content part: text verbatim, anything else as a marker."""
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{param}' must be an object, not {json_type(part)}", param=param)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"'{param}.type' must be a string, not {json_type(kind)}",
                             param=f"{param}.type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"'{param}.text' must be a string, not {json_type(text)}",
                                 param=f"{param}.text")
        return text
    # Chat nests the payload under the type's name ({"type": "image_url", "image_url": {...}});
    # Responses puts it beside the type ({"type": "input_image", "image_url": "..."}).
    payload = part.get(kind)
    if payload is None:
        payload = {key: value for key, value in part.items() if key != "type"}
    return _marker(kind, payload, param)


def _content_text(content: object, param: str) -> str:
    """Chat/Responses content: a string, null, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}' must be a string, an array of content parts or null,"
            f" not {json_type(content)}", param=param)
    return _PART.join([_part_text(part, f"{param}[{i}]") for i, part in enumerate(content)])


def _messages_text(messages: object, param: str, items: bool = False,
                   skip_system: bool = False) -> str:
    """Chat messages, or Responses input items (`items`: role-less typed items allowed);
    `skip_system`: system messages are checked but left out (Anthropic's, hoisted before)."""
    if not isinstance(messages, list):
        raise InvalidRequest(f"'{param}' must be an array, not {json_type(messages)}",
                             param=param)
    pieces: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            where = f"{param}[{index}]"
            raise InvalidRequest(f"'{where}' must be an object, not {json_type(message)}",
                                 param=where)
        role = message.get("role")
        if not isinstance(role, str):
            kind = message.get("type")
            if role is None and items and isinstance(kind, str) and kind != "message":
                # function_call, function_call_output, reasoning, ...: verbatim, compact
                body = {key: value for key, value in message.items() if key != "type"}
                pieces += (_ROLE, kind, _ROLE, _json_text(body, f"{param}[{index}]"))
                continue
            where = f"{param}[{index}].role"
            if role is None:
                raise InvalidRequest(f"'{where}' is required", param=where)
            raise InvalidRequest(f"'{where}' must be a string, not {json_type(role)}",
                                 param=where)
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                where = f"{param}[{index}].name"
                raise InvalidRequest(f"'{where}' must be a string, not {json_type(name)}",
                                     param=where)
            role = f"{role}{_NAME}{name}"
        content = message.get("content")
        text = (content if isinstance(content, str)
                else _content_text(content, f"{param}[{index}].content"))
        if skip_system and role == "system":
            continue
        pieces += (_ROLE, role, _ROLE, text)
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            pieces.append(_json_text(tool_calls, f"{param}[{index}].tool_calls"))
    return "".join(pieces)


def _chat_text(data: Mapping[str, Any]) -> str:
    if "messages" not in data:
        raise InvalidRequest("'messages' is required", param="messages")
    return _messages_text(data["messages"], "messages")


def _is_token_ids(value: list[Any]) -> bool:
    return all(type(item) is int for item in value)  # `type is`: a boolean is no token id


def _prompt_like_text(value: object, param: str) -> str:
    """Completions `prompt` / embeddings `input`: string, strings, token ids, token id lists."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequest(
            f"'{param}' must be a string, an array of strings, an array of token ids or an"
            f" array of token id arrays, not {json_type(value)}", param=param)
    if not value:
        return ""
    first = value[0]
    if isinstance(first, str):
        if all(isinstance(item, str) for item in value):
            return _PART.join(value)
        expected = "strings"
    elif isinstance(first, list):
        if all(isinstance(item, list) and _is_token_ids(item) for item in value):
            return _PART.join([" ".join(map(str, item)) for item in value])
        expected = "arrays of token ids (integers)"
    elif _is_token_ids(value):
        return " ".join(map(str, value))
    else:
        expected = "token ids (integers)"
    raise InvalidRequest(
        f"'{param}' must be an array of {expected} throughout (a string, an array of strings,"
        f" of token ids, or of token id arrays)", param=param)


def _completions_text(data: Mapping[str, Any]) -> str:
    if "prompt" not in data:
        raise InvalidRequest("'prompt' is required", param="prompt")
    return _prompt_like_text(data["prompt"], "prompt")


def _embeddings_text(data: Mapping[str, Any]) -> str:
    if "input" not in data:
        raise InvalidRequest("'input' is required", param="input")
    return _prompt_like_text(data["input"], "input")


def _responses_text(data: Mapping[str, Any]) -> str:
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest(f"'instructions' must be a string, not {json_type(instructions)}",
                             param="instructions")
    prefix = f"{_ROLE}instructions{_ROLE}{instructions}" if instructions else ""
    value = data.get("input")
    if isinstance(value, str):
        return f"{prefix}{_ROLE}user{_ROLE}{value}"
    if not isinstance(value, list):
        if "input" not in data:
            raise InvalidRequest("'input' is required", param="input")
        raise InvalidRequest("'input' must be a string or an array of items, not "
                             f"{json_type(value)}", param="input")
    return prefix + _messages_text(value, "input", items=True)


def _anthropic_system(value: object, param: str) -> list[str]:
    """Anthropic system text: a string, or the text of text blocks (others carry none)."""
    if value is None or isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be a string or an array of content blocks, not "
                             f"{json_type(value)}", param=param)
    texts = []
    for index, block in enumerate(value):
        where = f"{param}[{index}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {json_type(block)}",
                                 param=where)
        if block.get("type") == "text":
            text = _part_text(block, where)
            if text and not text.startswith(_BILLING_HEADER):
                texts.append(text)
    return texts


def _messages_api_text(data: Mapping[str, Any]) -> str:
    """Anthropic Messages (and count_tokens) as the engine's chat rendering orders it."""
    if "messages" not in data:
        raise InvalidRequest("'messages' is required", param="messages")
    messages = data["messages"]
    system = _anthropic_system(data.get("system"), "system")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "system":
                system += _anthropic_system(message.get("content"),
                                            f"messages[{index}].content")
    rest = _messages_text(messages, "messages", skip_system=True)
    return f"{_ROLE}system{_ROLE}{''.join(system)}{rest}" if system else rest


def _score_input_text(value: object, param: str) -> str:
    """One rerank/score input: text, or multimodal content as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _json_text(value, param)
    raise InvalidRequest(f"'{param}' must be a string or an object, not {json_type(value)}",
                         param=param)


def _rerank_text(data: Mapping[str, Any]) -> str:
    if "query" not in data:
        raise InvalidRequest("'query' is required", param="query")
    return _score_input_text(data["query"], "query")


# The first side of a score request, by each engine's name for it (vLLM
# entrypoints/pooling/scoring/protocol.py, the Score*Request classes at 004706d; SGLang's
# ScoringRequest has `query`).
_SCORE_FIRST = ("queries", "text_1", "data_1", "query")


def _score_text(data: Mapping[str, Any]) -> str:
    param = next((name for name in _SCORE_FIRST if name in data), None)
    if param is None:
        raise InvalidRequest("one of 'queries', 'text_1', 'data_1' or 'query' is required",
                             param="queries")
    value = data[param]
    if isinstance(value, list):
        if value and all(type(item) is int for item in value):  # SGLang: token ids
            return " ".join(map(str, value))
        return _PART.join([_score_input_text(item, f"{param}[{i}]")
                           for i, item in enumerate(value)])
    return _score_input_text(value, param)


_PROMPT_TEXT = {
    Api.CHAT: _chat_text,
    Api.COMPLETIONS: _completions_text,
    Api.RESPONSES: _responses_text,
    Api.EMBEDDINGS: _embeddings_text,
    Api.MESSAGES: _messages_api_text,
    Api.COUNT_TOKENS: _messages_api_text,
    Api.RERANK: _rerank_text,
    Api.SCORE: _score_text,
}
