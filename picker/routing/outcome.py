"""Outcome: how a request ended, in one enum every adapter and the lease book share."""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(enum.StrEnum):
    """How a request ended: the label of `llm_picker_requests_total`, and what the worker's
    circuit breaker hears (an enum, so a misspelt outcome is an error, not a silent no-op)."""

    COMPLETED = "completed"
    UPSTREAM_ERROR = "upstream_error"  # the engine answered 5xx or failed the call
    CANCELLED = "cancelled"  # the client went away, or the picker gave the slot back
    PREEMPTED = "preempted"  # ended by flow control for a higher band (flow.preempt)
    TIMEOUT = "timeout"  # the picker never heard the end (limits.timeout_secs)
    UNTRACKED = "untracked"  # released at once: its end can never be reported
    REJECTED = "rejected"  # refused before any lease (counted, never released)
