"""The simulated engine's Anthropic Messages API, as vLLM serves it.

vLLM serves /v1/messages and /v1/messages/count_tokens
(vllm/entrypoints/anthropic/api_router.py:49-50 and :95-96 at 01540b7) and answers errors
there as `{"type": "error", "error": {"type", "message"}}` (the same file, :37-46). A request
is converted to a chat request first, system message first, so the sim's prefix cache sees
what it sees for the same chat; a streamed answer is Anthropic's events, each an
`event: <type>` line and its `data:` line (vllm/entrypoints/anthropic/serving.py,
wrap_data_with_event, at 0001948).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from picker_sim.engine import SimEngine, prompt_tokens

__all__ = ["anthropic_error", "as_chat", "count_tokens", "messages"]


def anthropic_error(status: int, message: str, error_type: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": error_type, "message": message}},
                        status_code=status)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content
                       if isinstance(block, dict) and block.get("type") == "text")
    return ""


def as_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic request as the chat request vLLM turns it into (system message first)."""
    items = body.get("messages")
    items = items if isinstance(items, list) else []
    system = _text(body.get("system")) + "".join(
        _text(m.get("content")) for m in items if isinstance(m, dict) and m.get("role") == "system")
    chat: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    chat += [{"role": m.get("role"), "content": _text(m.get("content"))}
             for m in items if isinstance(m, dict) and m.get("role") != "system"]
    return {**body, "messages": chat}


def count_tokens(body: Mapping[str, Any]) -> Response:
    return JSONResponse({"input_tokens": len(prompt_tokens(as_chat(body)))})


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def messages(engine: SimEngine, body: Mapping[str, Any], reply_id: str,
                   model: str) -> Response:
    """/v1/messages: the answer, whole or as Anthropic's stream of events."""
    try:
        n_out = engine.output_tokens(body)
    except ValueError as exc:
        return anthropic_error(400, str(exc), "invalid_request_error")
    prompt = prompt_tokens(as_chat(body))
    message = {"id": reply_id, "type": "message", "role": "assistant", "model": model}
    if body.get("stream") is True:
        return StreamingResponse(_stream(engine, prompt, n_out, message),
                                 media_type="text/event-stream")
    await engine.generated(prompt, n_out)
    text = "".join(engine.token(i) for i in range(n_out))
    return JSONResponse({**message, "content": [{"type": "text", "text": text}],
                         "stop_reason": "max_tokens", "stop_sequence": None,
                         "usage": {"input_tokens": len(prompt), "output_tokens": n_out}})


async def _stream(engine: SimEngine, prompt: list[str], n_out: int,
                  message: Mapping[str, Any]) -> AsyncIterator[bytes]:
    async with engine.admitted(prompt) as run:
        await run.first_token()
        yield _event("message_start", {"message": {
            **message, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": len(prompt), "output_tokens": 0}}})
        yield _event("content_block_start",
                     {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i in range(n_out):
            if i:
                await run.decode(1)
            yield _event("content_block_delta", {
                "index": 0, "delta": {"type": "text_delta", "text": engine.token(i)}})
        run.finish()
    yield _event("content_block_stop", {"index": 0})
    yield _event("message_delta", {"delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                   "usage": {"output_tokens": n_out}})
    yield _event("message_stop", {})
