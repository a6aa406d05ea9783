"""GrpcEngines: SGLang gRPC engines as LiteLLM deployments, through a custom provider.

LiteLLM calls a `CustomLLM`'s acompletion / astreaming (completion / streaming for its
synchronous API) for every deployment whose `model` names the provider
(litellm 1.106.12 litellm/llms/custom_llm.py:42-128, routed by `custom_chat_llm_router`,
:219-231); the proxy registers it from `litellm_settings.custom_provider_map`
(litellm/proxy/proxy_server.py:6698-6711), an SDK caller by appending to
`litellm.custom_provider_map` (litellm/utils.py:572-583 adds the provider):

    litellm.custom_provider_map = [{"provider": "llm-picker-grpc",
                                    "custom_handler": litellm_plugin.grpc_provider.engines}]

Each call goes the way the picker's Envoy path sends one (picker.grpc_route): the same
GrpcTranscoder renders and tokenizes the chat with the engine's tokenizer (litellm_params'
`tokenizer_path`, else fetched once per engine with GetTokenizer, picker.fleet.grpc_tokenizer),
and the same OpenAIAnswer rebuilds the OpenAI answer from the engine's GenerateResponses, here
received whole over grpc.aio instead of as a proxy's body pieces. An answer the caller leaves
(its task cancelled, its stream closed) or a stop string ends early is aborted at the engine.

A streamed answer's events go back to LiteLLM as `ModelResponseStream` chunks, except its usage:
LiteLLM returns a custom provider's ModelResponseStream as is and drops one without content
(litellm_core_utils/streaming_handler.py:1122-1146), but keeps a GenericStreamingChunk dict's
`usage` (:1148-1176), so the engine's counts, not LiteLLM's estimate, are the call's usage.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, ModelResponseStream

from litellm_plugin.choose import plain
from litellm_plugin.errors import litellm_error, to_litellm_error
from litellm_plugin.grpc_deployment import ENGINE_KEYS, PROVIDER, engine_spec
from picker.errors import RequestError
from picker.fleet.grpc_calls import EngineCallFailed, EngineCalls
from picker.fleet.grpc_tokenizer import default_cache_dir, fetch_tokenizer
from picker.fleet.worker_spec import WorkerSpec
from picker.grpc_route import GrpcTranscoder, TokenizerUnavailable, engine_for
from picker.grpc_route.abort import Aborts
from picker.grpc_route.transcoder import WorkerTokenizers
from picker.routing.openai_body import request_from_data
from picker.routing.request import Api

if TYPE_CHECKING:
    from picker.tokens.tokenizer import EngineTokenizer

__all__ = ["GrpcEngines", "engines"]

# How long fetching an engine's tokenizer (GetTokenizer) may take.
_FETCH_SECS = 60.0


class GrpcEngines(CustomLLM):
    """One per process (`engines`): it keeps the loaded tokenizers and a channel per engine."""

    def __init__(self) -> None:
        super().__init__()
        self._tokenizers = WorkerTokenizers()
        self._fetched: dict[str, str] = {}  # engine url -> its GetTokenizer directory
        # grpc.aio channels belong to the loop that opened them.
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = \
            weakref.WeakKeyDictionary()
        self._aborts = Aborts()
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()

    # -- LiteLLM's entry points (it passes every argument by keyword) -----------------------

    async def acompletion(self, model: str, messages: list[Any],  # type: ignore[override]
                          api_base: str, optional_params: dict[str, Any], timeout: Any = None,
                          litellm_params: dict[str, Any] | None = None,
                          **_: Any) -> ModelResponse:
        document: dict[str, Any] = {}
        async for event in self._answer(model, messages, api_base, optional_params, timeout,
                                        litellm_params, stream=False):
            document = event
        return ModelResponse(**document)

    async def astreaming(self, model: str, messages: list[Any],  # type: ignore[override]
                         api_base: str, optional_params: dict[str, Any], timeout: Any = None,
                         litellm_params: dict[str, Any] | None = None,
                         **_: Any) -> AsyncGenerator[ModelResponseStream | GenericStreamingChunk]:
        reason = "stop"  # the usage chunk repeats the answer's finish_reason
        async for event in self._answer(model, messages, api_base, optional_params, timeout,
                                        litellm_params, stream=True):
            if event["choices"]:
                reason = event["choices"][0]["finish_reason"] or reason
                yield ModelResponseStream(**event)
            else:
                yield GenericStreamingChunk(text="", is_finished=True, finish_reason=reason,
                                            usage=event["usage"], index=0, tool_use=None)

    def completion(self, model: str, messages: list[Any],  # type: ignore[override]
                   api_base: str, optional_params: dict[str, Any], timeout: Any = None,
                   litellm_params: dict[str, Any] | None = None, **_: Any) -> ModelResponse:
        coroutine = self.acompletion(model=model, messages=messages, api_base=api_base,
                                     optional_params=optional_params, timeout=timeout,
                                     litellm_params=litellm_params)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop()).result()

    def streaming(self, model: str, messages: list[Any],  # type: ignore[override]
                  api_base: str, optional_params: dict[str, Any], timeout: Any = None,
                  litellm_params: dict[str, Any] | None = None,
                  **_: Any) -> Iterator[ModelResponseStream | GenericStreamingChunk]:
        """astreaming, driven from a synchronous caller on the provider's own loop."""
        loop = self._loop()
        chunks = self.astreaming(model=model, messages=messages, api_base=api_base,
                                 optional_params=optional_params, timeout=timeout,
                                 litellm_params=litellm_params)
        try:
            while True:
                try:
                    yield asyncio.run_coroutine_threadsafe(_next(chunks), loop).result()
                except StopAsyncIteration:
                    return
        finally:
            asyncio.run_coroutine_threadsafe(chunks.aclose(), loop).result()

    # -- one call -----------------------------------------------------------------------------

    async def _answer(self, model: str, messages: list[Any], api_base: str,
                      optional_params: dict[str, Any], timeout: Any,
                      litellm_params: dict[str, Any] | None,
                      stream: bool) -> AsyncIterator[dict[str, Any]]:
        """The OpenAI answer's objects (one document, or the stream's events); LiteLLM's
        exceptions for what fails. The engine's request_id is LiteLLM's call id, so an
        engine's log and LiteLLM's agree on a call."""
        call_id = (litellm_params or {}).get("litellm_call_id")
        headers = {"x-request-id": call_id} if isinstance(call_id, str) and call_id else {}
        try:
            spec = engine_spec(api_base, optional_params)
            body = {key: value for key, value in optional_params.items()
                    if key not in ENGINE_KEYS}
            body.update(model=model, messages=[plain(m) for m in messages], stream=stream)
            if stream:  # always: LiteLLM shows it only to callers that asked (see above)
                body["stream_options"] = {"include_usage": True}
            transcoder = GrpcTranscoder(engine_for(spec), await self._tokenizer(spec),
                                        request_from_data(Api.CHAT, body, headers),
                                        spec.tool_parser, spec.reasoning_parser)
        except RequestError as error:
            raise to_litellm_error(error, model) from error
        answer = transcoder.answer
        call = self._channel(spec).unary_stream(transcoder.engine.generate_path)(
            transcoder.message, timeout=timeout if isinstance(timeout, int | float) else None)
        try:
            try:
                async for message in call:
                    for event in _objects(answer.feed_messages([message]), model):
                        yield event
                    if answer.over:
                        break
                else:
                    for event in _objects(answer.end(0, ""), model):
                        yield event
            except grpc.aio.AioRpcError as exc:
                for event in _objects(answer.end(exc.code().value[0], exc.details() or ""),
                                      model):
                    yield event
        finally:
            if answer.cut_short or not answer.over:
                call.cancel()
                reason = "stop string" if answer.cut_short else "client disconnected"
                self._aborts.send(spec.host_port, transcoder.abort(reason))

    async def _tokenizer(self, spec: WorkerSpec) -> EngineTokenizer:
        path = spec.tokenizer_path or await self._fetch_tokenizer(spec)
        # A directory that does not load is a TokenizerUnavailable naming the key given here.
        return await asyncio.to_thread(self._tokenizers.load, path, spec.chat_template,
                                       "litellm_params.tokenizer_path")

    async def _fetch_tokenizer(self, spec: WorkerSpec) -> str:
        """The engine's own tokenizer (GetTokenizer), fetched on its first call."""
        known = self._fetched.get(spec.url)
        if known is not None:
            return known
        calls = EngineCalls()
        try:
            fetched = await asyncio.wait_for(
                fetch_tokenizer(calls, spec, default_cache_dir()), _FETCH_SECS)
        except (EngineCallFailed, ValueError, TimeoutError) as exc:
            raise TokenizerUnavailable(
                f"no litellm_params.tokenizer_path, and the engine's GetTokenizer failed: "
                f"{exc or 'timed out'}") from exc
        finally:
            await calls.close()
        self._fetched[spec.url] = str(Path(fetched))
        return self._fetched[spec.url]

    def _channel(self, spec: WorkerSpec) -> Any:
        channels = self._channels.setdefault(asyncio.get_running_loop(), {})
        channel = channels.get(spec.host_port)
        if channel is None:
            channel = channels[spec.host_port] = grpc.aio.insecure_channel(spec.host_port)
        return channel

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The loop the synchronous entry points run their calls on (a daemon thread)."""
        with self._sync_lock:
            if self._sync_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="llm-picker-grpc",
                                 daemon=True).start()
                self._sync_loop = loop
            return self._sync_loop


async def _next(chunks: AsyncGenerator[ModelResponseStream | GenericStreamingChunk]
                ) -> ModelResponseStream | GenericStreamingChunk:
    return await anext(chunks)


def _objects(data: bytes, model: str) -> list[dict[str, Any]]:
    """OpenAIAnswer's bytes (a JSON document, or server-sent events ending in [DONE]) as
    objects; an error object among them is raised as LiteLLM's exception."""
    if not data:
        return []
    texts = [data] if not data.startswith(b"data: ") else [
        event[6:] for event in data.split(b"\n\n") if event.startswith(b"data: ")
        and event != b"data: [DONE]"]
    objects = [json.loads(text) for text in texts]
    for item in objects:
        error = item.get("error")
        if error is not None:
            raise litellm_error(int(error["code"]), str(error["message"]), model,
                                provider=PROVIDER)
    return objects


# The instance custom_provider_map names: `custom_handler: litellm_plugin.grpc_provider.engines`.
engines = GrpcEngines()
