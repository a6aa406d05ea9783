"""The picker's RequestError, or an HTTP status, as the LiteLLM exception with the same meaning
(one place)."""

from __future__ import annotations

from litellm.exceptions import (
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)

from picker.errors import RequestError

__all__ = ["litellm_error", "to_litellm_error"]


def to_litellm_error(error: RequestError, model: str) -> Exception:
    """The exception; a Retry-After the picker sets rides on its `headers`, which the LiteLLM
    proxy copies into its error response (litellm/proxy/common_request_processing.py reads
    `getattr(e, "headers")` before anything else)."""
    return litellm_error(error.status, error.message, model, error.headers())


def litellm_error(status: int, message: str, model: str, headers: dict[str, str] | None = None,
                  provider: str = "") -> Exception:
    """LiteLLM's exception for an HTTP status (the picker's refusal, or an engine's failure
    as picker.grpc_route.answer states it)."""
    if status == 400:
        return BadRequestError(message=message, model=model, llm_provider=provider)
    if status == 404:
        return NotFoundError(message=message, model=model, llm_provider=provider)
    if status == 429:
        return RateLimitError(message=message, model=model, llm_provider=provider,
                              headers=headers or None)
    if status in (500, 502):
        return InternalServerError(message=message, model=model, llm_provider=provider)
    return _Unavailable(message, model, headers or {}, provider)


class _Unavailable(ServiceUnavailableError):
    """ServiceUnavailableError carrying `headers` as RateLimitError does (its constructor takes
    none), so a 503's Retry-After reaches the proxy's client too."""

    def __init__(self, message: str, model: str, headers: dict[str, str],
                 provider: str) -> None:
        super().__init__(message=message, model=model, llm_provider=provider)
        self.headers = headers or None
