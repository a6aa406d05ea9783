"""The opt-in access log: one JSON line per request, for `log.access: true`.

Fields are the ones an operator joins with Envoy's own log and the engines' logs: Envoy's
`x-request-id`, the model asked for, the worker chosen, the policy that chose it, that worker's
prefix match (how much of the prompt it was believed to hold), how the request
ended and how long the picker held it. Prompt text, headers and worker api keys are never fields,
so no configuration can leak them here.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import TextIO

__all__ = ["ACCESS_LOGGER", "MAX_CLIENT_CHARS", "AccessEntry", "AccessLog", "clip", "format_entry"]

ACCESS_LOGGER = "llm_picker.access"
# Client-chosen text (the request id, the model, a policy named by x-routing-strategy): bounded
# so that a hostile client cannot write huge lines; the marker says how much was cut.
MAX_CLIENT_CHARS = 256


@dataclass(frozen=True, slots=True)
class AccessEntry:
    request_id: str
    model: str
    policy: str
    worker: str | None  # None: refused before a worker was chosen
    match: float | None  # the worker's prefix match, 0..1 (None: no prefix index, or refused)
    outcome: str  # completed | upstream_error | cancelled | timeout | rejected
    status: int | None  # the upstream's status, or the picker's own for a refusal
    duration_ms: float


def clip(value: str) -> str:
    """`value`, or its first MAX_CLIENT_CHARS characters and `...[+N chars]`."""
    if len(value) <= MAX_CLIENT_CHARS:
        return value
    return f"{value[:MAX_CLIENT_CHARS]}...[+{len(value) - MAX_CLIENT_CHARS} chars]"


def format_entry(entry: AccessEntry) -> str:
    fields = asdict(entry)
    for name in ("request_id", "model", "policy"):
        fields[name] = clip(fields[name])
    fields["duration_ms"] = round(entry.duration_ms, 2)
    fields["match"] = None if entry.match is None else round(entry.match, 4)
    return json.dumps(fields, separators=(",", ":"))


class AccessLog:
    """Writes entries as bare JSON lines through a logger of its own (not in logging's global
    tree), whatever `log.level` says: whoever turned the access log on wants it even with other
    logging at WARNING, and a second picker in one process gets a second log, not a shared one."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = logging.Logger(ACCESS_LOGGER, logging.INFO)
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def record(self, entry: AccessEntry) -> None:
        self._logger.info(format_entry(entry))
