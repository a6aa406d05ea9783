"""SGLang's cache-aware routing, decision for decision with sglang-router 0.3.2.

Read from lightseekorg/smg at c7f9bf9f5 ("[smg] release 0.3.2", the source of the PyPI
`sglang-router` 0.3.2 the benchmarks run), src/policies/cache_aware.rs:

- imbalanced when max - min in-flight > `balance_abs_threshold` and max > min x
  `balance_rel_threshold` (cache_aware.rs:364-372): the least loaded worker, and the prompt is
  still inserted in its tree (cache_aware.rs:306-321);
- balanced: the tree's longest character match; its tenant if the match rate (matched / prompt
  characters) exceeds `cache_threshold`, else the least loaded worker (cache_aware.rs:394-416;
  0.3.2 no longer takes the smallest tree, smg commit 6fe82758a "pick min load instead of min
  tenant size"); the chosen worker's tree then holds the prompt (cache_aware.rs:420);
- the load is the router's own in-flight count: a request holds it from the pick to the end of
  its response body (`WorkerLoadGuard`, core/worker.rs:1103-1140, routers/http/router.rs:294);
- the text is the chat messages' text contents joined by single spaces, roles left out
  (`extract_text_for_routing`, protocols/chat.rs:641-698); other APIs use the prompt;
- the tree (picker/policies/radix.py) is the policy's own, in characters, with sglang-router's
  size bound and eviction interval (cache_aware.rs:100-123; defaults router_args.py: 2**26
  characters, 60 s).

Deliberate differences:

- equal loads: sglang-router takes the first of its worker list (`min_by_key`,
  cache_aware.rs:307-310, 411-415), an order fixed by worker UUIDs in a DashMap; at low
  concurrency every new prompt then goes to that one engine. `tie_break: random` (the default)
  spreads them; `first` takes the first candidate, as sglang-router does.
- a matched tenant that is not a candidate (unhealthy, at its limit): sglang-router drops its
  whole tree and takes the first healthy worker (cache_aware.rs:441-461); here the least loaded
  candidate, and the tree stays for when the worker is back. Eviction runs inside a pick once
  the interval has passed, not on a timer thread: policies start no threads.

Unlike the other prefix policies, this one does not read the shared prefix index: its
128-character blocks round matches and cannot say which worker SGLang would name.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import Field

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.policies.radix import RadixTree
from picker.routing.request import Api, RoutingRequest


class CacheAwareParams(SeededParams):
    cache_threshold: float = Field(default=0.3, ge=0, le=1)
    balance_abs_threshold: int = Field(default=64, ge=0)
    balance_rel_threshold: float = Field(default=1.5, gt=0)
    # Characters per worker's tree before eviction trims it (sglang-router --max-tree-size).
    max_tree_size: int = Field(default=2**26, ge=1)
    # Seconds between evictions; 0 never evicts (sglang-router --eviction-interval-secs).
    eviction_interval_secs: float = Field(default=60, ge=0)
    tie_break: Literal["random", "first"] = "random"
    # A worker not chosen for this long leaves the tree at the next eviction: a removed or
    # long-dead worker's prompts would otherwise stay resident (up to max_tree_size each).
    # sglang-router forgets a worker when it is removed; this policy does not see removals.
    forget_after_secs: float = Field(default=600, gt=0)

    def matches_text(self) -> bool:
        return True  # the radix tree holds prompts' text


def routing_text(request: RoutingRequest) -> str:
    """The text sglang-router matches: chat messages' text (string contents, text parts,
    assistants' reasoning_content) joined by single spaces; the prompt text otherwise."""
    if request.api is not Api.CHAT or request.messages is None:
        return request.prompt_text
    pieces: list[str] = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list):
            pieces.extend(part.get("text") or "" for part in content
                          if isinstance(part, Mapping) and part.get("type") == "text"
                          and isinstance(part.get("text"), str))
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            pieces.append(reasoning)
    return " ".join(piece for piece in pieces if piece)


class CacheAware:
    name = "cache_aware"

    def __init__(self, params: CacheAwareParams,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = params.cache_threshold
        self._abs = params.balance_abs_threshold
        self._rel = params.balance_rel_threshold
        self._max_chars = params.max_tree_size
        self._interval = params.eviction_interval_secs
        self._rng = _random.Random(params.seed) if params.tie_break == "random" else None
        self._tree = RadixTree()
        self._forget_after = params.forget_after_secs
        self._clock = clock
        self._evicted_at = clock()
        self._chosen_at: dict[str, float] = {}  # worker id -> when last chosen

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        self._maybe_evict()
        loads = [w.in_flight for w in candidates]  # each read once: others change them
        high, low = max(loads), min(loads)
        text = routing_text(request)
        chosen: Worker | None = None
        if not (high - low > self._abs and high > low * self._rel) and text:
            tenant, matched = self._tree.match(text)
            if matched / len(text) > self._threshold:
                chosen = next((w for w in candidates if w.id == tenant), None)
        if chosen is None:
            chosen = self._least_loaded(candidates, loads, low)
        self._tree.insert(text, chosen.id)
        self._chosen_at[chosen.id] = self._evicted_at
        return chosen

    def _least_loaded(self, candidates: Sequence[Worker], loads: list[int],
                      low: int) -> Worker:
        tied = [w for w, load in zip(candidates, loads, strict=True) if load == low]
        return tied[0] if self._rng is None or len(tied) == 1 else self._rng.choice(tied)

    def _maybe_evict(self) -> None:
        """Every eviction interval: forget workers not chosen for forget_after_secs, then
        trim the others to max_tree_size. (`_evicted_at` doubles as the pick's clock reading:
        one clock call per interval, not per pick.)"""
        now = self._clock()
        if self._interval and now - self._evicted_at >= self._interval:
            self._evicted_at = now
            gone = [w for w, at in self._chosen_at.items() if now - at > self._forget_after]
            for worker_id in gone:
                del self._chosen_at[worker_id]
                self._tree.remove(worker_id)
            self._tree.evict(self._max_chars)


DESCRIPTOR = PolicyDescriptor(CacheAware.name, CacheAwareParams, CacheAware)
