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
    if error.status == 400:
        return BadRequestError(message=error.message, model=model, llm_provider="")
    if error.status == 404:
        return NotFoundError(message=error.message, model=model, llm_provider="")
    if error.status == 429:
        return RateLimitError(message=error.message, model=model, llm_provider="")
    return ServiceUnavailableError(message=error.message, model=model, llm_provider="")
