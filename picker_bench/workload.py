"""A seeded shared-prefix chat workload and its oracle prefix-cache hit rate.

Two kinds of requests, interleaved at random: questions against one of G long system prompts
(the RAG / agent pattern), and multi-turn conversations resending their growing history each
turn. Words are `chars_per_token - 1` letters plus a space, and the simulator tokenizes by word,
so prompts have that many characters per engine token (real tokenizers: ~4 for English prose,
more or less for code, JSON, other languages) - what an index sized by assumption gets wrong.
Each request carries its group's key and turn, to measure session stickiness and group splits. The
oracle hit rate is what one engine with an unbounded cache would reach on the same sequence: no
router can do better, so it is the yardstick for routing quality.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from picker_sim.cache import token_block_hashes
from picker_sim.engine import prompt_tokens

__all__ = ["Workload", "make_workload", "oracle_hit_rate"]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(slots=True)
class Workload:
    bodies: list[dict[str, Any]]  # OpenAI chat bodies, in arrival order
    arrivals: list[float]  # seconds from start
    # Per body: its group ("g<n>" system prompt, "c<n>" conversation) and turn (0 for questions).
    keys: list[tuple[str, int]]


def make_workload(
    *, seed: int = 0, groups: int = 64, system_tokens: int = 2000, questions: int = 8,
    conversations: int = 16, turns: int = 4, output_tokens: int = 16, rate: float = 40.0,
    chars_per_token: int = 6,
) -> Workload:
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choices(_LETTERS, k=max(1, chars_per_token - 1)))
                    for _ in range(5000)})

    def text(words: int) -> str:
        return " ".join(rng.choices(vocab, k=words))

    systems = [f"group {g} " + text(system_tokens) for g in range(groups)]
    items: list[tuple[tuple[str, int], dict[str, Any]]] = []
    for g, system in enumerate(systems):
        for q in range(questions):
            items.append(((f"g{g}", 0), {"messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {g}.{q}: " + text(30)},
            ]}))
    conversation_items: list[list[tuple[tuple[str, int], dict[str, Any]]]] = []
    for c in range(conversations):
        history: list[dict[str, str]] = [
            {"role": "system", "content": f"conversation {c} " + text(system_tokens // 2)}
        ]
        chain = []
        for t in range(turns):
            history = [*history, {"role": "user", "content": f"turn {t}: " + text(60)}]
            chain.append(((f"c{c}", t), {"messages": list(history)}))
            history = [*history, {"role": "assistant", "content": text(output_tokens)}]
        conversation_items.append(chain)
    rng.shuffle(items)
    # Conversation turns keep their order; they are spread across the question stream.
    for chain in conversation_items:
        slots = sorted(rng.sample(range(len(items) + 1), len(chain)))
        for offset, (slot, turn) in enumerate(zip(slots, chain, strict=True)):
            items.insert(slot + offset, turn)
    bodies = [{"model": "sim-model", "stream": True, "max_tokens": output_tokens,
               "stream_options": {"include_usage": True}, **item} for _, item in items]
    now, arrivals = 0.0, []
    for _ in bodies:
        now += rng.expovariate(rate)
        arrivals.append(now)
    return Workload(bodies, arrivals, [key for key, _ in items])


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


@dataclass
class Served:
    """One request of a workload as a driver saw it: which engine, status, TTFT, end to end."""

    worker: str
    status: int
    ttft: float
    e2e: float


# Runs a workload against one front end (the picker through Envoy, LiteLLM, a peer router):
# every request's result, and the wall time it took.
Driver = Callable[[Workload], Coroutine[Any, Any, tuple[list[Served], float]]]
