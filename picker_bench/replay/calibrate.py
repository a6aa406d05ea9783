"""`llm-picker replay --calibrate`: the simulator's speed per engine, fitted to a recorded trace.

The simulated engine's latency model (picker_sim.engine) is, for a request alone on an
engine, TTFT = fixed + uncached prompt tokens / prefill rate and, per later token, one decode
step. A recorded trace has, per request, the worker, the observed TTFT and latency, the prompt
and output lengths and the engine's cached tokens: least squares fit the two lines per worker,
and the fit error (root mean square error over the mean) says how well the model describes
that engine. Queueing is not in the model: fit a trace taken at moderate load, or expect the
error to say so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from picker.trace.line import TraceLine

__all__ = ["EngineFit", "calibrate", "format_fits"]

_MIN_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class EngineFit:
    worker: str
    samples: int
    fixed_ms: float  # TTFT with nothing to prefill (SimConfig.ttft_ms)
    prefill_tokens_per_sec: float | None  # None: the prompts did not vary enough to tell
    decode_step_ms: float | None  # per output token after the first; None: no such tokens
    ttft_error: float  # RMS error of the TTFT fit over the mean TTFT
    decode_error: float | None


def calibrate(lines: Sequence[TraceLine]) -> list[EngineFit]:
    """One fit per worker with at least 3 requests of known TTFT; raises ValueError naming
    what the trace lacks."""
    by_worker: dict[str, list[TraceLine]] = defaultdict(list)
    for line in lines:
        if line.worker is not None and line.ttft_ms is not None and line.outcome in (
                None, "completed"):
            by_worker[line.worker].append(line)
    fits = [_fit(worker, own) for worker, own in sorted(by_worker.items())
            if len(own) >= _MIN_SAMPLES]
    if not fits:
        raise ValueError("no worker has 3 completed requests with 'worker' and 'ttft_ms': "
                         "calibration needs a trace recorded by the picker with TTFT observed "
                         "(Envoy passing response bodies, or a LiteLLM stream)")
    return fits


def _fit(worker: str, lines: Sequence[TraceLine]) -> EngineFit:
    xs = [float(line.input_length - (line.cached_tokens or 0)) for line in lines]
    ys = [(line.ttft_ms or 0.0) / 1000 for line in lines]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread \
        if spread else 0.0
    fixed = mean_y - slope * mean_x
    ttft_error = _relative_rms([fixed + slope * x for x in xs], ys)
    steps = [(float(line.output_length - 1),
              ((line.latency_ms or 0.0) - (line.ttft_ms or 0.0)) / 1000)
             for line in lines if line.output_length > 1 and line.latency_ms is not None]
    step = decode_error = None
    if steps:
        step = sum(n * d for n, d in steps) / sum(n * n for n, _ in steps)
        decode_error = _relative_rms([n * step for n, _ in steps], [d for _, d in steps])
    return EngineFit(worker, len(lines), fixed * 1000, 1 / slope if slope > 0 else None,
                     None if step is None else step * 1000, ttft_error, decode_error)


def _relative_rms(predicted: Sequence[float], observed: Sequence[float]) -> float:
    mean = sum(observed) / len(observed)
    rms = math.sqrt(sum((p - o) ** 2 for p, o in zip(predicted, observed, strict=True))
                    / len(observed))
    return rms / mean if mean > 0 else 0.0


def format_fits(fits: Sequence[EngineFit]) -> str:
    rows = [f"{'worker':<20} {'samples':>7} {'fixed ms':>8} {'prefill tok/s':>13} "
            f"{'decode ms':>9} {'ttft err':>8} {'decode err':>10}"]
    for f in fits:
        rate = "-" if f.prefill_tokens_per_sec is None else f"{f.prefill_tokens_per_sec:.0f}"
        step = "-" if f.decode_step_ms is None else f"{f.decode_step_ms:.3f}"
        derr = "-" if f.decode_error is None else f"{f.decode_error:.1%}"
        rows.append(f"{f.worker:<20} {f.samples:>7} {f.fixed_ms:>8.2f} {rate:>13} {step:>9} "
                    f"{f.ttft_error:>8.1%} {derr:>10}")
    return "\n".join(rows)
