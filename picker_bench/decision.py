"""In-process decision latency: the runtime's route with prefix hashing (8 workers, 8k prompts),
and the whole per-request path of long prompts (body parse, prefix match, pick, record)."""

from __future__ import annotations

import json
import random
import statistics
import time

from picker.config import load_config
from picker.routing.openai_body import parse_request
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

__all__ = ["decision_latency", "long_prompt_latency", "run_long_prompt"]


def decision_latency(policy: str, workers: int = 8, prompt_chars: int = 8192,
                     picks: int = 5000, seed: int = 0, explain: bool = False
                     ) -> tuple[float, float]:
    """(p50, p99) in microseconds of PickerRuntime.route_sync + release over a shared-prefix
    mix; `explain` records every decision (explain.enabled; the header is not asked for)."""
    rng = random.Random(seed)
    config = load_config(overrides={
        "policy.name": policy, "prefix.enabled": True, "explain.enabled": explain,
        "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]}
                    for i in range(workers)]})
    runtime = PickerRuntime(config)  # not started: the decision needs no background service
    systems = ["".join(rng.choices("abcdefghij ", k=prompt_chars - 200)) for _ in range(32)]
    requests = [RoutingRequest(model="m", api=Api.CHAT,
                               prompt_text=rng.choice(systems) + f"question {i} " * 20)
                for i in range(picks)]
    timings = []
    for request in requests:
        started = time.perf_counter()
        lease = runtime.routing.route_sync(request)
        timings.append(time.perf_counter() - started)
        lease.release(Outcome.COMPLETED)
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


def _long_body(api: Api, chars: int, document: int, question: int, ascii_only: bool) -> bytes:
    """A long-context request: one of a few shared documents, then a short question.

    Words are drawn from a fixed list (a few accented ones when not `ascii_only`, which
    `json.dumps` escapes as most clients send them)."""
    words = ["the", "context", "of", "a", "long", "document", "tokens", "cache", "engine"]
    if not ascii_only:
        words += ["café", "naïve", "straße"]
    rng = random.Random(document)
    text = " ".join(rng.choices(words, k=chars // 5))[:chars] + f"\nQuestion {question}?"
    if api is Api.CHAT:
        payload: dict[str, object] = {"messages": [
            {"role": "system", "content": "Answer from the document."},
            {"role": "user", "content": text}]}
    else:
        payload = {"prompt": text, "max_tokens": 16}
    return json.dumps({"model": "m", "stream": True, **payload}).encode()


def long_prompt_latency(chars: int, api: Api, ascii_only: bool = True, requests: int = 200,
                        documents: int = 4) -> tuple[float, float]:
    """(parse p50, parse + route + release p50) in microseconds for requests of `chars`
    prompt characters on the prefix_cache policy and the approximate index, 4 workers.

    This is the picker's whole per-request work on a long prompt apart from the Envoy
    protocol; bodies are built beforehand so only the picker is timed."""
    config = load_config(overrides={
        "policy.name": "prefix_cache", "prefix.enabled": True,
        "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]}
                    for i in range(4)]})
    runtime = PickerRuntime(config)
    headers = {"content-type": "application/json"}
    bodies = [_long_body(api, chars, i % documents, i, ascii_only) for i in range(requests)]
    parse_times, total_times = [], []
    for body in bodies:
        started = time.perf_counter()
        request = parse_request(api.value, body, headers)
        parsed = time.perf_counter()
        runtime.routing.route_sync(request).release(Outcome.COMPLETED)
        total_times.append(time.perf_counter() - started)
        parse_times.append(parsed - started)
    return statistics.median(parse_times) * 1e6, statistics.median(total_times) * 1e6


def run_long_prompt(sizes: list[int], requests: int) -> int:
    """`llm-picker bench longprompt`: the table of long_prompt_latency per body shape."""
    print(f"{'prompt chars':>12}  {'api':<12}{'text':<14}{'parse p50 us':>13}"
          f"{'total p50 us':>13}")
    for chars in sizes:
        for api, ascii_only in ((Api.COMPLETIONS, True), (Api.CHAT, True), (Api.CHAT, False)):
            parse, total = long_prompt_latency(chars, api, ascii_only, requests)
            text = "ascii" if ascii_only else "escaped utf-8"
            print(f"{chars:>12}  {api.name.lower():<12}{text:<14}{parse:>13.0f}{total:>13.0f}")
    return 0
