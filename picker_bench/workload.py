"""A seeded shared-prefix chat workload and its oracle prefix-cache hit rate.

Two kinds of requests, interleaved at random: questions against one of G long system prompts
(the RAG / agent pattern), and multi-turn conversations whose history grows each turn. The
oracle hit rate is what one engine with an unbounded cache would reach on the same sequence: no
router can do better, so it is the yardstick for routing quality.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from picker_sim.cache import token_block_hashes
from picker_sim.engine import prompt_tokens

__all__ = ["Workload", "make_workload", "oracle_hit_rate"]

_VOCAB = [f"w{i}" for i in range(5000)]


@dataclass(slots=True)
class Workload:
    bodies: list[dict[str, Any]]  # OpenAI chat bodies, in arrival order
    arrivals: list[float]  # seconds from start


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_VOCAB, k=words))


def make_workload(
    *, seed: int = 0, groups: int = 64, system_tokens: int = 2000, questions: int = 8,
    conversations: int = 16, turns: int = 4, output_tokens: int = 16, rate: float = 40.0,
) -> Workload:
    rng = random.Random(seed)
    systems = [f"group {g} " + _text(rng, system_tokens) for g in range(groups)]
    items: list[dict[str, Any]] = []
    for g, system in enumerate(systems):
        for q in range(questions):
            items.append({"messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {g}.{q}: " + _text(rng, 30)},
            ]})
    conversation_items: list[list[dict[str, Any]]] = []
    for c in range(conversations):
        history: list[dict[str, str]] = [
            {"role": "system", "content": f"conversation {c} " + _text(rng, system_tokens // 2)}
        ]
        chain = []
        for t in range(turns):
            history = [*history, {"role": "user", "content": f"turn {t}: " + _text(rng, 60)}]
            chain.append({"messages": list(history)})
            history = [*history, {"role": "assistant", "content": _text(rng, output_tokens)}]
        conversation_items.append(chain)
    rng.shuffle(items)
    # Conversation turns keep their order; they are spread across the question stream.
    for chain in conversation_items:
        slots = sorted(rng.sample(range(len(items) + 1), len(chain)))
        for offset, (slot, turn) in enumerate(zip(slots, chain, strict=True)):
            items.insert(slot + offset, turn)
    bodies = [{"model": "sim-model", "stream": True, "max_tokens": output_tokens,
               "stream_options": {"include_usage": True}, **item} for item in items]
    now, arrivals = 0.0, []
    for _ in bodies:
        now += rng.expovariate(rate)
        arrivals.append(now)
    return Workload(bodies, arrivals)


def oracle_hit_rate(workload: Workload, block_tokens: int) -> float:
    """Prompt tokens an unbounded single cache would have served, over all prompt tokens."""
    seen: set[int] = set()
    hits = total = 0
    for body in workload.bodies:
        tokens = prompt_tokens(body)
        hashes = token_block_hashes(tokens, block_tokens)
        leading = 0
        for block in hashes:
            if block not in seen:
                break
            leading += 1
        hits += min(len(tokens), leading * block_tokens)
        total += len(tokens)
        seen.update(hashes)
    return hits / total if total else 0.0
