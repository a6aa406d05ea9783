"""Sizing the approximate index like each engine's cache, from measurements, not assumptions.

An approximate index that forgets a prefix before the engine does sends the next request of a
session elsewhere, and the whole history is prefilled again on a second engine; one that
remembers a little longer at worst sends a request to an engine that has just evicted it,
which then prefills what any other engine would have. So the index errs on remembering:

1. Capacity in tokens is the engine's own (`num_gpu_blocks x block_size` from
   `vllm:cache_config_info`).
2. Prompt units per token: 1 when the index sees tokens; with character blocks, the prompt
   characters the picker sent a worker over the prompt tokens the engine counted for them
   (`vllm:prompt_tokens_total`) since the first scrape, which holds the chat template and the
   real tokenizer, whatever the language. Until enough has been sent, the chars/token
   observed in responses (picker.fleet.speed), else no engine sizing (the configured capacity).
3. Then `margin` more, and a correction learned by comparing the hits the index predicted for
   its picks with the engine's own prefix-cache hit counter between scrapes: more real hits
   than predicted means the index forgot what the engine held (grow), fewer means it
   remembers what the engine evicted (shrink).

The estimate, the correction and the hit ratio are exported per worker (picker.observe.metrics).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from picker.fleet.engine_load import EngineCounter, EngineLoad
from picker.fleet.registry import Worker

__all__ = ["Calibration", "WorkerCalibration"]

# Prompt tokens an engine must have counted before a chars/token ratio is trusted.
_MIN_TOKENS = 2048
# Predicted plus real hits (tokens) in a scrape window for it to say anything.
_MIN_WINDOW_TOKENS = 256
_ALPHA = 0.3
# Hit ratio (real / predicted) outside this band moves the correction, within these bounds.
_BAND = (0.85, 1.15)
_GROW, _SHRINK = 1.1, 0.95
_BOUNDS = (0.5, 4.0)


@dataclass(slots=True)
class WorkerCalibration:
    """One worker's measurements; read by metrics, written only under Calibration's lock."""

    units_sent: int = 0
    units_predicted: int = 0  # prompt units the index expected the engine to hold
    units_per_token: float | None = None
    hit_ratio: float | None = None  # engine hits / predicted hits, moving average
    correction: float = 1.0
    capacity_blocks: int | None = None
    # At the first scrape seen (units sent, engine prompt tokens) and at the last one
    # (scraped_at, units predicted, engine hits).
    baseline: tuple[int, float] | None = None
    previous: tuple[float, int, float] | None = None


def _prompt_tokens(load: EngineLoad) -> float | None:
    counters = load.counters
    return counters.get(EngineCounter.PROMPT_TOKENS, counters.get(EngineCounter.PREFIX_QUERIES))


class Calibration:
    """Per-worker capacity of the approximate index; fed by the prefix producer's records."""

    def __init__(self, units_per_block: int, sees_tokens: bool, margin: float = 1.1) -> None:
        self._block = units_per_block
        self._sees_tokens = sees_tokens
        self._margin = margin
        self._workers: dict[str, WorkerCalibration] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> Mapping[str, WorkerCalibration]:
        return dict(self._workers)

    def forget(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    def units_per_token(self) -> float | None:
        """The fleet's mean estimate (prompt units per token), None before any."""
        known = [c.units_per_token for c in self._workers.values()
                 if c.units_per_token is not None]
        return sum(known) / len(known) if known else None

    def recorded(self, worker: Worker, units: int, predicted_units: int) -> int | None:
        """Account one prompt routed to `worker` (`predicted_units` of it believed cached
        there); returns the worker's new capacity in blocks when it changed."""
        with self._lock:
            state = self._workers.setdefault(worker.id, WorkerCalibration())
            state.units_sent += units
            state.units_predicted += predicted_units
            engine = worker.engine
            if engine is None or (state.previous is not None
                                  and state.previous[0] == engine.scraped_at):
                return None
            return self._scraped(worker, engine, state)

    def _scraped(self, worker: Worker, engine: EngineLoad,
                 state: WorkerCalibration) -> int | None:
        tokens = _prompt_tokens(engine)
        hits = engine.counters.get(EngineCounter.PREFIX_HITS)
        if state.baseline is None and tokens is not None:
            state.baseline = (state.units_sent, tokens)
        if self._sees_tokens:
            state.units_per_token = 1.0
        elif state.baseline is not None and tokens is not None \
                and tokens - state.baseline[1] >= _MIN_TOKENS:
            sent = state.units_sent - state.baseline[0]
            state.units_per_token = sent / (tokens - state.baseline[1])
        elif worker.speed.chars_per_token is not None:
            state.units_per_token = worker.speed.chars_per_token
        if state.previous is not None and hits is not None and state.units_per_token:
            self._compare(state, (state.units_predicted - state.previous[1])
                          / state.units_per_token, hits - state.previous[2])
        state.previous = (engine.scraped_at, state.units_predicted, hits or 0.0)
        if not (engine.num_gpu_blocks and engine.block_size and state.units_per_token):
            return None
        blocks = max(1, int(engine.num_gpu_blocks * engine.block_size * state.units_per_token
                            * self._margin * state.correction / self._block))
        if state.capacity_blocks is not None \
                and abs(blocks - state.capacity_blocks) <= state.capacity_blocks // 100:
            return None
        state.capacity_blocks = blocks
        return blocks

    @staticmethod
    def _compare(state: WorkerCalibration, predicted: float, real: float) -> None:
        """Move the correction when the engine's hits and the index's predictions disagree."""
        if real < 0 or predicted + real < _MIN_WINDOW_TOKENS:
            return
        ratio = (real + 1) / (predicted + 1)
        state.hit_ratio = ratio if state.hit_ratio is None else \
            state.hit_ratio + _ALPHA * (ratio - state.hit_ratio)
        low, high = _BOUNDS
        if state.hit_ratio > _BAND[1]:
            state.correction = min(high, state.correction * _GROW)
        elif state.hit_ratio < _BAND[0]:
            state.correction = max(low, state.correction * _SHRINK)
