"""The picker's RequestError as the LiteLLM exception with the same meaning (one place)."""

from __future__ import annotations

from litellm.exceptions import (
    BadRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)

from picker.errors import RequestError

__all__ = ["to_litellm_error"]


def to_litellm_error(error: RequestError, model: str) -> Exception:
    """The exception; a Retry-After the picker sets rides on its `headers`, which the LiteLLM
    proxy copies into its error response (litellm/proxy/common_request_processing.py reads
    `getattr(e, "headers")` before anything else)."""
    headers = error.headers()
    if error.status == 400:
        return BadRequestError(message=error.message, model=model, llm_provider="")
    if error.status == 404:
        return NotFoundError(message=error.message, model=model, llm_provider="")
    if error.status == 429:
        return RateLimitError(message=error.message, model=model, llm_provider="",
                              headers=headers or None)
    return _Unavailable(error.message, model, headers)


class _Unavailable(ServiceUnavailableError):
    """ServiceUnavailableError carrying `headers` as RateLimitError does (its constructor takes
    none), so a 503's Retry-After reaches the proxy's client too."""

    def __init__(self, message: str, model: str, headers: dict[str, str]) -> None:
        super().__init__(message=message, model=model, llm_provider="")
        self.headers = headers or None
