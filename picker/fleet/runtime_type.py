"""RuntimeType: which engine serves a worker, in a module of its own.

Kept apart from picker.fleet.worker_spec (pydantic models, ~0.2 s to import) so that what only
needs the name - the simulated engines, which start by the hundred in the test suite - does
not pay for building the models.
"""

from __future__ import annotations

import enum

__all__ = ["RuntimeType"]


class RuntimeType(enum.StrEnum):
    """Which engine is behind the url; selects metric names and discovery endpoints."""

    SGLANG = "sglang"
    VLLM = "vllm"
    TRTLLM = "trtllm"
    EXTERNAL = "external"
