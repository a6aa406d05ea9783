"""OpenAI-style request bodies -> RoutingRequest.

This runs on every routed request, so it is plain `json` and dict lookups (no model classes).
Every malformed input becomes InvalidRequest naming the field; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from picker.errors import InvalidRequest, UnsupportedMediaType, UnsupportedPath
from picker.request import Api, RoutingRequest

__all__ = ["parse_request", "request_from_data"]

_APIS = {api.value: api for api in Api}
_MAX_MODEL_CHARS = 256
# Separators that do not occur in normal text, so distinct message lists give distinct texts.
_ROLE = "\x00"
_PART = "\x01"
_INLINE_LIMIT = 256


def _clip(value: str, limit: int = 100) -> str:
    """Never echo large client input back in an error."""
    return value if len(value) <= limit else value[:limit] + "..."


def parse_request(path: str, body: bytes, headers: Mapping[str, str]) -> RoutingRequest:
    api = _APIS.get(path.split("?", 1)[0].rstrip("/"))
    if api is None:
        raise UnsupportedPath(f"the picker routes only {', '.join(_APIS)}; got {_clip(path)!r}")
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"content-type must be application/json, not {_clip(media_type)!r}")
    return request_from_data(api, _load_object(body), headers)


def request_from_data(api: Api, data: Mapping[str, Any],
                      headers: Mapping[str, str]) -> RoutingRequest:
    """A request already decoded (LiteLLM hands over Python objects, not bytes)."""
    model = data.get("model")
    if model is None:
        raise InvalidRequest("'model' is required", param="model")
    if not isinstance(model, str):
        raise InvalidRequest(f"'model' must be a string, not {_json_type(model)}", param="model")
    if not model or len(model) > _MAX_MODEL_CHARS:
        raise InvalidRequest(
            f"'model' must be 1 to {_MAX_MODEL_CHARS} characters", param="model"
        )
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest(f"'stream' must be a boolean, not {_json_type(stream)}",
                             param="stream")
    return RoutingRequest(
        model=model,
        api=api,
        prompt_text=_PROMPT_TEXT[api](data),
        stream=stream,
        session_key=_session_key(data, headers),
        headers=headers,
        messages=data["messages"] if api is Api.CHAT else None,
    )


def _load_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise InvalidRequest("invalid JSON: nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {_json_type(data)}")
    return data


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _session_key(data: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    header = headers.get("x-session-id")
    if header:
        return header
    user = data.get("user")
    return user if isinstance(user, str) and user else None


def _marker(kind: str, payload: object) -> str:
    """A short stable stand-in for non-text content (images, audio): same input, same marker."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
    if len(text) > _INLINE_LIMIT:
        text = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"[{kind}:{text}]"


def _content_text(content: object, param: str) -> str:
    """Chat/Responses content: a string, null, or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}' must be a string or an array of parts, not {_json_type(content)}",
            param=param,
        )
    pieces = []
    for index, part in enumerate(content):
        if isinstance(part, str):
            pieces.append(part)
            continue
        if not isinstance(part, dict):
            raise InvalidRequest(
                f"'{param}[{index}]' must be an object, not {_json_type(part)}",
                param=f"{param}[{index}]",
            )
        text = part.get("text")
        if isinstance(text, str):
            pieces.append(text)
        else:
            kind = part.get("type")
            kind = kind if isinstance(kind, str) else "part"
            pieces.append(_marker(kind, part.get(kind, part)))
    return _PART.join(pieces)


def _messages_text(messages: object, param: str) -> str:
    if not isinstance(messages, list):
        raise InvalidRequest(f"'{param}' must be an array, not {_json_type(messages)}",
                             param=param)
    pieces = []
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {_json_type(message)}",
                                 param=where)
        role = message.get("role", "")
        if not isinstance(role, str):
            raise InvalidRequest(f"'{where}.role' must be a string", param=f"{where}.role")
        text = _content_text(message.get("content"), f"{where}.content")
        if "tool_calls" in message:
            text += _marker("tool_calls", message["tool_calls"])
        pieces.append(f"{_ROLE}{role}{_ROLE}{text}")
    return "".join(pieces)


def _chat_text(data: Mapping[str, Any]) -> str:
    if "messages" not in data:
        raise InvalidRequest("'messages' is required", param="messages")
    return _messages_text(data["messages"], "messages")


def _prompt_like_text(value: object, param: str) -> str:
    """Completions `prompt` / embeddings `input`: string, strings, token ids, token id lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return _PART.join(value)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return " ".join(map(str, value))
        if all(
            isinstance(item, list)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            for item in value
        ):
            return _PART.join(" ".join(map(str, item)) for item in value)
    raise InvalidRequest(
        f"'{param}' must be a string, an array of strings, an array of token ids or an array of"
        f" token id arrays; got {_json_type(value)}",
        param=param,
    )


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
        raise InvalidRequest("'instructions' must be a string", param="instructions")
    prefix = f"{_ROLE}instructions{_ROLE}{instructions}" if instructions else ""
    value = data.get("input")
    if value is None:
        raise InvalidRequest("'input' is required", param="input")
    if isinstance(value, str):
        return f"{prefix}{_ROLE}user{_ROLE}{value}"
    return prefix + _messages_text(value, "input")


_PROMPT_TEXT = {
    Api.CHAT: _chat_text,
    Api.COMPLETIONS: _completions_text,
    Api.RESPONSES: _responses_text,
    Api.EMBEDDINGS: _embeddings_text,
}
