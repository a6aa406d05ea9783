"""In-flight accounting for LiteLLM calls: a slot from the pick to the call's end.

The slot is taken at selection time (not at LiteLLM's pre-call hook): a burst of concurrent
calls is selected before any of them starts, and a load-aware policy must already see the
earlier picks of that burst. The lease's token rides in the request's `metadata`, which LiteLLM
hands back to its success hook (after the last chunk for streams) and failure hook (errors,
timeouts, cancels). A retry selects again for the same request: the previous attempt's lease is
then released as failed. Either way each lease is released exactly once.

A successful call also teaches the picker its engine's speed: LiteLLM reports the call's start,
first chunk (`completion_start_time`) and end, and the response's usage; they reach the
registry's one entry point for observations (`WorkerRegistry.observe`, picker.fleet.speed).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from picker.fleet.speed import Observation
from picker.routing.contract import Picker
from picker.routing.leases import Lease
from picker.routing.outcome import Outcome

__all__ = ["LEASE_KEY", "InFlightTracker", "Observer", "caller_metadata", "lease_token",
           "observation_of"]

LEASE_KEY = "llm_picker_lease"
# Where LiteLLM keeps a call's metadata: `litellm_metadata` on routes whose API has a
# `metadata` field of its own (Anthropic's /v1/messages), `metadata` on the others.
_METADATA_KEYS = ("litellm_metadata", "metadata")


def _metadata_key(request_kwargs: dict[str, Any]) -> str:
    return "litellm_metadata" if "litellm_metadata" in request_kwargs else "metadata"


def caller_metadata(request_kwargs: dict[str, Any] | None) -> Any:
    """The metadata the call came with (a dict, normally): where the caller's headers are and
    where an SDK caller reads the explain line."""
    return None if request_kwargs is None else request_kwargs.get(_metadata_key(request_kwargs))


def lease_token(kwargs: dict[str, Any]) -> str | None:
    """The lease token LiteLLM's call details (a callback's kwargs) carry, if any."""
    params = kwargs.get("litellm_params") or {}
    for holder in (*(params.get(key) for key in _METADATA_KEYS),
                   *(kwargs.get(key) for key in _METADATA_KEYS)):
        if isinstance(holder, dict) and isinstance(holder.get(LEASE_KEY), str):
            return str(holder[LEASE_KEY])
    return None


@dataclass(frozen=True, slots=True)
class Observer:
    """The picker that routed a call, and the prompt characters it routed on."""

    picker: Picker
    prompt_chars: int


def _seconds(later: Any, earlier: Any) -> float | None:
    if isinstance(later, datetime) and isinstance(earlier, datetime):
        return (later - earlier).total_seconds()
    if isinstance(later, int | float) and isinstance(earlier, int | float):
        return float(later - earlier)
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def observation_of(kwargs: dict[str, Any], response: Any, start: Any, end: Any,
                   prompt_chars: int | None) -> Observation:
    """A LiteLLM success callback's arguments as an Observation; unknown parts stay None.

    Only streams have a first token distinct from the end: a non-streaming call's TTFT is its
    whole duration, which says nothing of prefill, so it is left out."""
    usage = getattr(response, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    first = kwargs.get("completion_start_time")
    streamed = bool(kwargs.get("stream")) and first is not None and first != end
    return Observation(
        prompt_tokens=_count(getattr(usage, "prompt_tokens", None)),
        cached_tokens=_count(getattr(details, "cached_tokens", None)),
        output_tokens=_count(getattr(usage, "completion_tokens", None)),
        ttft_secs=_seconds(first, start) if streamed else None,
        decode_secs=_seconds(end, first) if streamed else None,
        prompt_chars=prompt_chars,
    )


class InFlightTracker(CustomLogger):
    """One per process, like LiteLLM's callback list it lives in (LiteLLM invokes only one
    callback instance per class): every attached strategy's leases go through it."""

    def __init__(self) -> None:
        super().__init__()
        self._leases: dict[str, tuple[Lease, Observer | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def installed(cls) -> InFlightTracker:
        """The tracker in litellm.callbacks, registering one on first use."""
        for callback in litellm.callbacks:
            if isinstance(callback, cls):
                return callback
        tracker = cls()
        litellm.callbacks.append(tracker)
        return tracker

    @property
    def open_calls(self) -> int:
        return len(self._leases)

    def begin(self, request_kwargs: dict[str, Any] | None, lease: Lease,
              observer: Observer | None = None) -> dict[str, Any] | None:
        """Hold `lease` until LiteLLM reports the call's end; the call's own metadata, which
        now carries the lease's token (None: the lease was released at once, because a call
        LiteLLM gives no metadata to carry a token can never be reported).

        The token goes into a copy of the caller's metadata made for this call: a caller may
        pass one dict to many concurrent calls, which LiteLLM hands on by reference, and a
        token in it would be every call's (each would end the others' leases). A retry runs on
        the same request kwargs, so it finds its failed attempt's token in the copy."""
        metadata = caller_metadata(request_kwargs)
        if request_kwargs is None or not isinstance(metadata, dict | None):
            lease.release(Outcome.UNTRACKED)
            return None
        own = dict(metadata or {})
        previous = own.get(LEASE_KEY)
        if isinstance(previous, str):
            self.end(previous, Outcome.UPSTREAM_ERROR)  # this is a retry of a failed attempt
        token = uuid.uuid4().hex
        with self._lock:
            self._leases[token] = (lease, observer)
        own[LEASE_KEY] = token
        request_kwargs[_metadata_key(request_kwargs)] = own
        return own

    def drop(self, picker: Picker) -> None:
        """Release every open call `picker` routed (its strategy is being detached: their
        ends may never be reported to a picker that still runs)."""
        with self._lock:
            dropped = [token for token, (_, observer) in self._leases.items()
                       if observer is not None and observer.picker is picker]
        for token in dropped:
            self.end(token, Outcome.CANCELLED)

    def end(self, token: str | None, outcome: Outcome) -> None:
        """Release the lease behind `token` (once; later calls do nothing)."""
        self._pop(token, outcome)

    def _pop(self, token: str | None, outcome: Outcome) -> tuple[Lease, Observer | None] | None:
        with self._lock:
            held = self._leases.pop(token, None) if token else None
        if held is not None:
            held[0].release(outcome)
        return held

    def _succeeded(self, kwargs: dict[str, Any], response: Any, start: Any, end: Any) -> None:
        token = lease_token(kwargs)
        with self._lock:
            held = self._leases.pop(token, None) if token else None
        if held is None:
            return
        lease, observer = held
        if observer is not None:
            # Before the release: the lease's end (flow control's quota) reads the usage.
            lease.observe(observation_of(kwargs, response, start, end, observer.prompt_chars))
        lease.release(Outcome.COMPLETED)

    # -- LiteLLM hooks ----------------------------------------------------------------------

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self._succeeded(kwargs, response_obj, start_time, end_time)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self._succeeded(kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self.end(lease_token(kwargs), Outcome.UPSTREAM_ERROR)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self.end(lease_token(kwargs), Outcome.UPSTREAM_ERROR)
