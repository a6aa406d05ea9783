"""How fast each engine is, learned from what the picker observes: one value per worker.

Engines in one fleet differ (GPU generation, tensor parallelism, quantisation), so "least
loaded" is not "soonest answered". A `SpeedModel` holds an engine's prefill rate (uncached
prompt tokens per second), decode step (seconds per output token), mean time to first token and
the characters of prompt text per token its tokenizer produces. It is an immutable value: the
registry (the only writer of live worker state) replaces a worker's with `observe(...)` on a
finished request and with `scraped(...)` on each engine metrics scrape, so readers on the hot
path never lock.

Two sources, one model:
- `Observation`: one finished request as a proxy saw it (TTFT, usage). The Envoy response path
  and LiteLLM's success callback both report through `WorkerRegistry.observe`.
- The engine's own counters between two scrapes (picker.fleet.engine_load.EngineCounter): vLLM's
  prefill time and computed tokens give the prefill rate directly; TTFT and prompt/hit
  counters give a lower bound of it otherwise (SGLang); inter-token latency gives the decode
  step.

Estimates are exponentially weighted, so an engine that slows down (thermal throttling, a
noisy neighbour) is followed within a few observations.

A `PrefillBacklog` is the prefill work the picker itself has just sent to an engine: the scraped
waiting count is up to a scrape interval old while a burst of cold prefills lasts a few hundred
milliseconds, so the picker counts the uncached prompt tokens of each request it sends there and
lets them drain at the engine's learned prefill rate (the first token is not seen when Envoy
does not pass response bodies, so the rate, not the response, ends the work), and never more
than the requests still open there were sent with. The processes of one picker keep one such
queue per engine between them (picker.processes.backlog); peer replicas add theirs to it
(picker.replicas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from picker.fleet.engine_load import EngineCounter, EngineLoad

__all__ = ["Observation", "PrefillBacklog", "SpeedModel", "predicted_ttft"]

# Weight of the newest observation in each moving average.
_ALPHA = 0.2
# Prefills shorter than this say more about scheduling overhead than about the prefill rate.
_MIN_PREFILL_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Observation:
    """One finished request on one worker; any field may be unknown (None)."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    output_tokens: int | None = None
    ttft_secs: float | None = None
    decode_secs: float | None = None  # first token to last
    prompt_chars: int | None = None  # of the prompt text the picker routed on


def _mix(old: float | None, new: float) -> float:
    return new if old is None else old + _ALPHA * (new - old)


@dataclass(frozen=True, slots=True)
class SpeedModel:
    """What the picker has learned about one engine's speed; None until observed."""

    prefill_tokens_per_sec: float | None = None
    decode_step_secs: float | None = None
    ttft_secs: float | None = None  # mean time to first token, queueing included
    chars_per_token: float | None = None

    @property
    def known(self) -> bool:
        return self.prefill_tokens_per_sec is not None

    def observe(self, obs: Observation) -> SpeedModel:
        """This model updated with one finished request (built once, not field by field with
        dataclasses.replace: this runs for every request the picker sees finish)."""
        prefill, decode, ttft, chars = (self.prefill_tokens_per_sec, self.decode_step_secs,
                                        self.ttft_secs, self.chars_per_token)
        if obs.ttft_secs is not None and obs.ttft_secs > 0:
            ttft = _mix(ttft, obs.ttft_secs)
            if obs.prompt_tokens is not None:
                uncached = obs.prompt_tokens - (obs.cached_tokens or 0)
                if uncached >= _MIN_PREFILL_TOKENS:
                    prefill = _mix(prefill, uncached / obs.ttft_secs)
        if (obs.decode_secs is not None and obs.output_tokens is not None
                and obs.output_tokens > 1 and obs.decode_secs > 0):
            decode = _mix(decode, obs.decode_secs / (obs.output_tokens - 1))
        if obs.prompt_chars and obs.prompt_tokens:
            chars = _mix(chars, obs.prompt_chars / obs.prompt_tokens)
        return SpeedModel(prefill, decode, ttft, chars)

    def scraped(self, before: EngineLoad | None, after: EngineLoad) -> SpeedModel:
        """This model updated with what the engine counted between two scrapes."""
        if before is None:
            return self
        prefill, decode, ttft = self.prefill_tokens_per_sec, self.decode_step_secs, self.ttft_secs

        def grew(counter: EngineCounter) -> float:
            return after.delta(before, counter) or 0.0

        requests = grew(EngineCounter.TTFT_COUNT)
        ttft_total = grew(EngineCounter.TTFT_SUM)
        if requests > 0 and ttft_total > 0:
            ttft = _mix(ttft, ttft_total / requests)
        computed, prefill_secs = grew(EngineCounter.PREFILL_TOKENS), \
            grew(EngineCounter.PREFILL_SECS)
        if not (computed and prefill_secs):
            # No prefill timing (SGLang): uncached tokens over whole TTFTs, a lower bound.
            computed = grew(EngineCounter.PREFIX_QUERIES) - grew(EngineCounter.PREFIX_HITS)
            prefill_secs = ttft_total
        if computed >= _MIN_PREFILL_TOKENS * max(1.0, requests) and prefill_secs > 0:
            prefill = _mix(prefill, computed / prefill_secs)
        steps, step_total = grew(EngineCounter.ITL_COUNT), grew(EngineCounter.ITL_SUM)
        if steps > 0 and step_total > 0:
            decode = _mix(decode, step_total / steps)
        return SpeedModel(prefill, decode, ttft, self.chars_per_token)


class PrefillBacklog(NamedTuple):
    """Uncached prompt tokens sent to one engine and not yet prefilled, as a fluid queue
    draining at the engine's prefill rate from `at` (time.monotonic()) on, bounded by
    `open_tokens` (the uncached prompt tokens of the requests sent there that have not ended)
    plus what is left of `peer_tokens`.

    The bound is a count, not an estimate (issue 35.3): an ended request has certainly been
    prefilled, so what the fluid queue still holds beyond the open requests' tokens is an
    underestimated prefill rate, not work. The count ends at the response's first bytes where
    the adapter sees them (`Lease.first_token`: ext_proc with a response body mode), else at
    the request's end.

    Peer replicas' sends (`peer_sent`) join the same queue - the engine prefills every
    replica's prompts in one queue, at one rate - but nobody here sees them end, so their part
    of the bound is a fluid of its own: their tokens drained at the full rate as if the engine
    prefilled nothing else, the least of them that can still be left.

    Immutable (a NamedTuple: made on every request sent and ended, cheaper than a frozen
    dataclass): the registry replaces a worker's on each request sent and ended, as it does its
    `SpeedModel`; in a multi-process picker the value lives in a table every process shares
    (picker.processes.backlog)."""

    tokens: float = 0.0
    at: float = 0.0
    open_tokens: float = 0.0
    peer_tokens: float = 0.0

    def left(self, rate: float | None, now: float) -> float:
        """Tokens still ahead at `now`; 0 while the rate is unknown (nothing could use them)."""
        return self._at(rate, now)[0]

    def plus(self, tokens: float, rate: float | None, now: float) -> PrefillBacklog:
        """A request with `tokens` uncached prompt tokens was sent."""
        tokens = max(0.0, tokens)
        left, peers = self._at(rate, now)
        return PrefillBacklog(left + tokens, now, self.open_tokens + tokens, peers)

    def peer_sent(self, tokens: float, rate: float | None, now: float) -> PrefillBacklog:
        """A peer replica sent a request with `tokens` uncached prompt tokens."""
        tokens = max(0.0, tokens)
        left, peers = self._at(rate, now)
        return PrefillBacklog(left + tokens, now, self.open_tokens, peers + tokens)

    def ended(self, tokens: float, rate: float | None, now: float) -> PrefillBacklog:
        """A request sent with `tokens` (as given to `plus`) has ended."""
        still_open = max(0.0, self.open_tokens - max(0.0, tokens))
        left, peers = self._at(rate, now)
        return PrefillBacklog(min(still_open + peers, left), now, still_open, peers)

    def _at(self, rate: float | None, now: float) -> tuple[float, float]:
        """(tokens ahead, peers' part of the bound) at `now`."""
        if rate is None or rate <= 0:
            return 0.0, 0.0
        drained = rate * (now - self.at)
        peers = self.peer_tokens - drained
        if peers < 0.0:
            peers = 0.0
        tokens = self.tokens - drained
        if tokens <= 0.0:
            return 0.0, peers
        return min(self.open_tokens + peers, tokens), peers


def predicted_ttft(speed: SpeedModel, uncached_tokens: float, waiting: float,
                   ahead_tokens: float = 0.0) -> float | None:
    """Seconds until a request's first token on this engine: the work queued ahead plus this
    request's uncached prompt at the engine's prefill rate. None when the rate is unknown.

    The queue ahead is the larger of two views of it: the `waiting` requests the engine last
    reported (each costing its mean TTFT, which already holds their prefill), which sees every
    client but is up to a scrape interval old, and `ahead_tokens`, the picker's own sent but
    not yet prefilled tokens (`PrefillBacklog`), current but blind to other clients. Both count
    the same requests when both see them, so they are not added."""
    rate = speed.prefill_tokens_per_sec
    if rate is None or rate <= 0:
        return None
    ahead = max(waiting * (speed.ttft_secs or 0.0), ahead_tokens / rate)
    return ahead + max(0.0, uncached_tokens) / rate
