"""In-flight accounting for LiteLLM calls: a slot from the pick to the call's end.

The slot is taken at selection time (not at LiteLLM's pre-call hook): a burst of concurrent
calls is selected before any of them starts, and a load-aware policy must already see the
earlier picks of that burst. The lease's token rides in the request's `metadata`, which LiteLLM
hands back to its success hook (after the last chunk for streams) and failure hook (errors,
timeouts, cancels). A retry selects again for the same request: the previous attempt's lease is
then released as failed. Either way each lease is released exactly once.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from picker.leases import Lease

__all__ = ["LEASE_KEY", "InFlightTracker"]

LEASE_KEY = "llm_picker_lease"


def _token(kwargs: dict[str, Any]) -> str | None:
    for holder in ((kwargs.get("litellm_params") or {}).get("metadata"), kwargs.get("metadata")):
        if isinstance(holder, dict) and isinstance(holder.get(LEASE_KEY), str):
            return str(holder[LEASE_KEY])
    return None


class InFlightTracker(CustomLogger):
    """One per process, like LiteLLM's callback list it lives in (LiteLLM invokes only one
    callback instance per class): every attached strategy's leases go through it."""

    def __init__(self) -> None:
        super().__init__()
        self._leases: dict[str, Lease] = {}
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

    def begin(self, request_kwargs: dict[str, Any] | None, lease: Lease) -> None:
        """Hold `lease` until LiteLLM reports the call's end. A call LiteLLM gives no
        metadata to carry the lease's token can never be reported: its slot is released at
        once rather than left to limits.timeout_secs."""
        metadata = None if request_kwargs is None else request_kwargs.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            lease.release("untracked")
            return
        previous = metadata.get(LEASE_KEY)
        if isinstance(previous, str):
            self.end(previous, "upstream_error")  # this is a retry of a failed attempt
        token = uuid.uuid4().hex
        with self._lock:
            self._leases[token] = lease
        metadata[LEASE_KEY] = token

    def end(self, token: str | None, outcome: str) -> None:
        """Release the lease behind `token` (once; later calls do nothing)."""
        with self._lock:
            lease = self._leases.pop(token, None) if token else None
        if lease is not None:
            lease.release(outcome)

    # -- LiteLLM hooks ----------------------------------------------------------------------

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self.end(_token(kwargs), "completed")

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self.end(_token(kwargs), "completed")

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                          end_time: Any) -> None:
        self.end(_token(kwargs), "upstream_error")

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self.end(_token(kwargs), "upstream_error")
