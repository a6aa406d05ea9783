"""TraceRecorder: one trace line per request, written when its lease closes.

A lease watcher (picker.routing.leases.LeaseWatcher): told of each lease as it opens (the
request, the decision) and given its end (the outcome, and the response sample when the
adapter saw the response), which is where everything a line holds is known. The prompt is
hashed at the end, off the decision's path, and only for sampled requests.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from picker.errors import ConfigError
from picker.routing.leases import Lease, LeaseEnd
from picker.routing.predicted import Predicted
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice
from picker.trace.files import RotatingLines
from picker.trace.hashing import CHARS_PER_TOKEN, TraceHasher
from picker.trace.line import TraceLine
from picker.trace.settings import TraceSettings

__all__ = ["TraceRecorder"]

log = logging.getLogger("llm_picker.trace")

_MAX_TOKENS_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class TraceRecorder:
    needs_answer = False  # every request is a line of the trace, answered or not

    def __init__(self, settings: TraceSettings, hasher: TraceHasher | None = None) -> None:
        """`hasher`: the trace's keyed hasher (a fresh random key when None)."""
        self._rate = settings.sample_rate
        self._hasher = hasher or TraceHasher(settings.block_tokens)
        try:
            self._lines = RotatingLines(settings.path, settings.max_bytes, settings.backups)
        except OSError as exc:
            raise ConfigError("trace.path", f"cannot write {settings.path}: {exc}") from exc
        self._failing = False  # a write failed: said once, until one succeeds again
        self._rng = random.Random()
        self._start: float | None = None

    def opened(self, choice: Choice, request: RoutingRequest,
               predicted: Predicted) -> LeaseEnd | None:
        if self._rate < 1.0 and self._rng.random() >= self._rate:
            return None
        now = time.monotonic()
        if self._start is None:
            self._start = now
        arrived = (now - self._start) * 1000

        def ended(lease: Lease, outcome: str, response: ResponseSample | None) -> None:
            line = self._line(request, choice, predicted, arrived, lease, outcome, response)
            try:
                self._lines.write(line.to_json())
            except OSError as exc:  # a full disk, a removed directory: the request is fine
                if not self._failing:
                    log.warning("trace recording: cannot write %s (%s); lines are dropped "
                                "until it can", self._lines.path, exc)
                self._failing = True
            else:
                self._failing = False

        return ended

    def close(self) -> None:
        self._lines.close()

    def _line(self, request: RoutingRequest, choice: Choice, predicted: Predicted,
              arrived_ms: float, lease: Lease, outcome: str,
              response: ResponseSample | None) -> TraceLine:
        usage = response.usage if response is not None else None
        tokens = request.tokens
        estimate = len(tokens) if tokens is not None \
            else -(-len(request.prompt_text) // CHARS_PER_TOKEN)
        max_tokens = _max_tokens(request.body)
        ttft = response.ttft_secs if response is not None else None
        return TraceLine(
            timestamp=round(arrived_ms, 3),
            input_length=max(1, usage.prompt_tokens if usage and usage.prompt_tokens
                             else estimate),
            output_length=usage.completion_tokens if usage is not None else (max_tokens or 0),
            hash_ids=tuple(self._hasher.blocks(tokens, request.prompt_text)),
            block_size=self._hasher.block_tokens,
            model=request.model[:200],
            api=request.api.value,
            session=None if request.session_key is None
            else self._hasher.label(request.session_key),
            max_tokens=max_tokens,
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            latency_ms=round((time.monotonic() - lease.started) * 1000, 3),
            cached_tokens=None if usage is None else usage.cached_tokens,
            outcome=outcome,
            worker=lease.worker.id,
            policy=choice.policy,
            predicted_hit=None if predicted.hit is None else round(predicted.hit, 4),
            predicted_ttft_ms=None if predicted.ttft_secs is None
            else round(predicted.ttft_secs * 1000, 3),
        )


def _max_tokens(body: Mapping[str, Any] | None) -> int | None:
    for key in _MAX_TOKENS_KEYS:
        value = (body or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
