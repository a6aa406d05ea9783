"""Scorers: per-candidate scores in [0, 1] (higher is better) that the weighted policy combines.

A scorer knows nothing of its weight, and may answer None for a candidate it knows nothing
about (no fresh engine metrics, no prefix index): the combining policy treats that as neutral.
One table names them all, with the engine signal each reads; adding a signal is one function
and one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from picker.fleet.engine_load import EngineSignal
from picker.fleet.registry import Worker
from picker.fleet.speed import predicted_ttft
from picker.policies.lora_scores import lora_scores
from picker.routing.request import RoutingRequest

__all__ = ["DEFAULT_STALE_SECS", "SCORERS", "Scorer", "ScorerFn", "fresh_engine_value",
           "request_ttft", "uncached_tokens", "with_room"]

# Engine metrics older than this are unknown (LoadSettings.stale_after_secs's default).
DEFAULT_STALE_SECS = 5.0
# Times within this of each other score alike: a 2 ms and a 4 ms first token are both "now".
_TIME_FLOOR_SECS = 0.005
# Characters per token when neither the prefix index nor the engine's responses measured it.
_FALLBACK_CHARS_PER_TOKEN = 4.0
# Share of its cache an engine may be filled to by a new prompt (`with_room`). The rest is left
# to the groups already there, which grow (each session turn appends its exchange): filled to
# the brim, an engine evicts some other session's history as soon as that grows. Measured on the
# heterogeneous bench (docs/benchmarks.md, issue 19): 234-238 of 240 follow-up turns stayed on
# their engine filling to 100% (5 runs), 240 in each of 5 runs at 85%.
_NEW_PROMPT_FILL = 0.85

ScorerFn = Callable[[RoutingRequest, Sequence[Worker], float, float], list[float | None]]


@dataclass(frozen=True, slots=True)
class Scorer:
    score: ScorerFn
    reads: EngineSignal | None = None  # the engine signal it needs, if any
    needs_prefix: bool = False


def fresh_engine_value(worker: Worker, signal: EngineSignal, now: float,
                       stale_after: float) -> float | None:
    """An engine-reported value, or None when never scraped, not exported, or stale."""
    engine = worker.engine
    if engine is None or not engine.fresh(now, stale_after):
        return None
    return signal.read(engine)


def _lower_is_better(values: list[float | None]) -> list[float | None]:
    known = [v for v in values if v is not None]
    top = max(known, default=0.0)
    return [None if v is None else (1.0 if top <= 0 else 1.0 - v / top) for v in values]


def _engine(signal: EngineSignal) -> Scorer:
    def score(_: RoutingRequest, candidates: Sequence[Worker], now: float,
              stale_after: float) -> list[float | None]:
        return _lower_is_better([fresh_engine_value(w, signal, now, stale_after)
                                 for w in candidates])
    return Scorer(score, reads=signal)


def _kv(_: RoutingRequest, candidates: Sequence[Worker], now: float,
        stale_after: float) -> list[float | None]:
    values = [fresh_engine_value(w, EngineSignal.KV_USAGE, now, stale_after) for w in candidates]
    return [None if v is None else 1.0 - v for v in values]


def _in_flight(_: RoutingRequest, candidates: Sequence[Worker], now: float,
               stale_after: float) -> list[float | None]:
    return _lower_is_better([float(w.in_flight) for w in candidates])


def _faster_is_better(values: list[float | None]) -> list[float | None]:
    """Ratio to the fastest known candidate: half as fast scores 0.5."""
    known = [v for v in values if v is not None]
    if not known:
        return [None] * len(values)
    best = min(known) + _TIME_FLOOR_SECS
    return [None if v is None else best / (v + _TIME_FLOOR_SECS) for v in values]


def uncached_tokens(request: RoutingRequest, worker: Worker) -> float:
    """Prompt tokens `worker` would prefill for this request: those past its prefix match, or
    the whole prompt without a prefix index."""
    match = request.prefix
    if match is not None:
        return match.uncached_tokens(worker.id)
    if request.tokens is not None:
        return float(len(request.tokens))
    per_token = worker.speed.chars_per_token or _FALLBACK_CHARS_PER_TOKEN
    return len(request.prompt_text) / per_token


def _held(request: RoutingRequest, candidates: Sequence[Worker]) -> bool:
    """Whether some candidate is believed to hold part of the prompt: the request has a home (a
    session's next turn, a known system prompt) where its follow-ups must stay, rather than
    being a new group whose placement is free."""
    match = request.prefix
    if match is None or not match.total_blocks:
        return False
    # match.rate(w.id) > 0, without a call and a division per candidate: three scorers of the
    # default profile ask this on every decision.
    matched = match.matched
    return any(matched.get(w.id, 0) > 0 for w in candidates)


def with_room(request: RoutingRequest, candidates: Sequence[Worker]) -> Sequence[Worker]:
    """For a prompt no candidate holds, the candidates it fits in without filling their cache
    past _NEW_PROMPT_FILL; all of them when it fits nowhere, when the capacities are unknown
    (no approximate index), or when the prompt has a home.

    Why: a new group placed on a full engine evicts the history of the sessions already there,
    and their next turns then move to another engine and prefill it all again. Speed pulls new
    groups to the fast engines, so without this rule those fill first and lose sessions; with
    it, the speed scorers choose among the engines that have room."""
    match = request.prefix
    if match is None or _held(request, candidates):
        return candidates
    return [w for w in candidates if match.fits(w.id, _NEW_PROMPT_FILL)] or candidates


def request_ttft(request: RoutingRequest, worker: Worker, now: float, stale_after: float,
                 behind_sent: bool = True) -> float | None:
    """Predicted seconds to this request's first token on `worker` (picker.fleet.speed), from the
    prompt the worker is not believed to hold, behind the prefill work the picker has sent there
    unless `behind_sent` is False; None while the worker's speed is unknown. The SLO filter
    (picker.policies.weighted) predicts with that work whoever holds the prompt: a deadline is
    not to be missed for stickiness."""
    waiting = fresh_engine_value(worker, EngineSignal.WAITING, now, stale_after) or 0.0
    return predicted_ttft(worker.speed, uncached_tokens(request, worker), waiting,
                          worker.prefill_ahead(now) if behind_sent else 0.0)


def _ttft(request: RoutingRequest, candidates: Sequence[Worker], now: float,
          stale_after: float) -> list[float | None]:
    """Faster predicted first token scores higher. The prefill work just sent to an engine
    counts only for a prompt no one holds: the engine a group's follow-ups should stay on is the
    one busiest with that group's own first prefill, and scoring it down by that moves them off
    their history (docs/benchmarks.md, issue 19, run 4: counted for every request, 233 of 240
    follow-up turns stayed on their engine)."""
    behind_sent = not _held(request, candidates)
    return _faster_is_better([request_ttft(request, w, now, stale_after, behind_sent)
                              for w in candidates])


def _learned_ttft(request: RoutingRequest, candidates: Sequence[Worker], now: float,
                  stale_after: float) -> list[float | None]:
    """Faster first token as each engine's own latency model predicts it
    (picker.fleet.latency_fit): neutral for an engine whose model is still learning."""
    return _faster_is_better([
        w.latency.predict(w.latency_features(uncached_tokens(request, w), now, stale_after))
        for w in candidates])


def _decode(_: RoutingRequest, candidates: Sequence[Worker], now: float,
            stale_after: float) -> list[float | None]:
    return _faster_is_better([w.speed.decode_step_secs for w in candidates])


def _cache_space(request: RoutingRequest, candidates: Sequence[Worker], now: float,
                 stale_after: float) -> list[float | None]:
    """Smaller believed cache contents score higher: new prefixes spread over the caches (what
    SGLang's smallest-tree rule did until sglang-router 0.3.2 replaced it by least load, smg
    6fe82758a), instead of piling onto the fastest engine. A weight among others here, not a
    rule alone: alone, it ignored load and speed (docs/benchmarks.md, issue 35).

    Only for a prompt no candidate holds any of: for one that some engine holds, the engine
    holding it has the bigger cache by that very prompt, and scoring it down sends multi-turn
    sessions away from their history (SGLang, too, applied the rule only below its match
    threshold)."""
    match = request.prefix
    if match is None or _held(request, candidates):
        return [None] * len(candidates)
    return _lower_is_better([float(match.held.get(w.id, 0)) for w in candidates])


def _prefix(request: RoutingRequest, candidates: Sequence[Worker], now: float,
            stale_after: float) -> list[float | None]:
    match = request.prefix
    return [None if match is None else match.rate(w.id) for w in candidates]


SCORERS: Mapping[str, Scorer] = {
    "queue": _engine(EngineSignal.WAITING),
    "running": _engine(EngineSignal.RUNNING),
    "kv": Scorer(_kv, reads=EngineSignal.KV_USAGE),
    "in_flight": Scorer(_in_flight),
    "prefix": Scorer(_prefix, needs_prefix=True),
    "ttft": Scorer(_ttft),
    "learned_ttft": Scorer(_learned_ttft),
    "cache_space": Scorer(_cache_space, needs_prefix=True),
    "decode": Scorer(_decode),
    # llm-d's LoRA affinity (picker.policies.lora_scores); weighted also keeps a new adapter
    # off engines at max_lora when it weighs this.
    "lora": Scorer(lora_scores, reads=EngineSignal.LORA),
}
