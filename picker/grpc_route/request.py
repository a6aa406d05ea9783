"""An OpenAI chat or completion body as the Generate call every engine's service takes.

The prompt's token ids come from the worker's tokenizer directory (picker.tokens, as vLLM
renders and encodes them); the sampling options are read and checked here, once, into a
`GenerateCall` that each engine's adapter (picker.grpc_route.engines) writes as its own
GenerateRequest. What the router does not translate yet is refused with a 400 naming the field,
never dropped. A prefill/decode pair's call carries the pair's DisaggregatedParams
(picker.pd.protocols).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from picker.errors import InvalidRequest
from picker.pd.protocols import Bootstrap
from picker.routing.request import Api

if TYPE_CHECKING:  # picker.tokens needs the hf extra: imported where a tokenizer loads
    from picker.tokens.tokenizer import EngineTokenizer

__all__ = ["GenerateCall", "Sampling", "generate_call", "include_usage"]

# Defaults both engines give these options, where proto3's zero means something else (SGLang:
# sglang/srt/sampling/sampling_params.py; vLLM as SMG sends it: lightseekorg/smg
# crates/grpc_client/src/vllm_engine.rs:238-243). temperature and top_k differ: the engines'
# adapters fill them.
_DEFAULTS = {"top_p": 1.0, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
             "repetition_penalty": 1.0}
# Fields whose translation (logprobs, structured output, several choices, echo) is not built:
# a 400 says so instead of an answer that silently ignored them.
_NOT_YET = ("logprobs", "top_logprobs", "echo", "suffix", "best_of", "logit_bias")


@dataclass(frozen=True, slots=True)
class Sampling:
    """The request's sampling options; None where the engine's own default applies."""

    temperature: float | None
    top_k: int | None
    top_p: float
    min_p: float
    frequency_penalty: float
    presence_penalty: float
    repetition_penalty: float
    max_tokens: int | None
    stop: tuple[str, ...]
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    ignore_eos: bool


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """One Generate call, engine-neutral. `bootstrap`: a prefill/decode pair's rendezvous,
    None for a regular worker."""

    request_id: str
    input_ids: list[int]
    sampling: Sampling
    stream: bool
    bootstrap: Bootstrap | None = None


def generate_call(body: Mapping[str, Any], api: Api, tokenizer: EngineTokenizer,
                  request_id: str, stream: bool,
                  bootstrap: Bootstrap | None = None) -> GenerateCall:
    """The Generate call for `body`; InvalidRequest names a field the router cannot send."""
    if api not in (Api.CHAT, Api.COMPLETIONS):
        raise InvalidRequest(f"{api.value} is not served by gRPC workers yet")
    for name in _NOT_YET:
        if body.get(name) not in (None, False, 0):
            raise InvalidRequest(f"{name} is not supported for gRPC workers yet", param=name)
    n = body.get("n", 1)
    if n != 1:
        raise InvalidRequest("n must be 1 for gRPC workers", param="n")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, Mapping)
                                        or response_format.get("type") != "text"):
        raise InvalidRequest("response_format other than text is not supported for gRPC "
                             "workers yet", param="response_format")
    ids = tokenizer.body_ids(body)
    if not ids:
        raise InvalidRequest("the prompt encodes to no token", param="prompt")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise InvalidRequest("max_tokens must be a positive integer", param="max_tokens")
    sampling = Sampling(
        temperature=_number(body, "temperature", None),
        top_k=_number(body, "top_k", None, integer=True),
        **{name: _number(body, name, default) for name, default in _DEFAULTS.items()},
        max_tokens=limit, stop=_stop(body),
        skip_special_tokens=_flag(body, "skip_special_tokens", True),
        spaces_between_special_tokens=_flag(body, "spaces_between_special_tokens", True),
        ignore_eos=_flag(body, "ignore_eos", False))
    return GenerateCall(request_id, ids, sampling, stream, bootstrap)


def include_usage(body: Mapping[str, Any]) -> bool:
    """A streamed answer ends with a usage chunk when `stream_options.include_usage` asks."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    return _flag(options, "include_usage", False)


def _number(body: Mapping[str, Any], name: str, default: float | None,
            integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number", param=name)
    if integer and not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer", param=name)
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean", param=name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise InvalidRequest("stop must be a string or a list of strings", param="stop")
