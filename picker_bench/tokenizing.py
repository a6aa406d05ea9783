"""`llm-picker bench tokenize`: what engine-exact tokenization of a chat costs in the picker.

For chats of about 1k, 8k and 32k tokens (a model family's tokenizer directory built by
picker_bench.tokenizer_dirs) it times, in one run: the body parse, the chat template render and
the render plus encode of picker/tokens for a chat it never saw (cold) and for the next turn of
a chat whose history it tokenized before (its pieces cached, picker/tokens/segments.py),
transformers' `apply_chat_template` on the cold chats (when transformers is installed), the
Rust tokenizer alone on the whole rendered text (ids only: the floor of a chat never seen), and
as the baseline the picker's whole routing decision (prefix_cache, 8 workers, 8k-character
prompt; picker_bench.decision). `--profile` adds cProfile's top functions for a never-seen and
a next-turn 8k chat: where the time goes between Jinja, the tokenizer and the picker's Python.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from picker.routing.openai_body import parse_request
from picker.tokens import EngineTokenizer, load_tokenizer
from picker_bench.decision import decision_latency
from picker_bench.tokenizer_dirs import build_tokenizer_dir, sample_text

__all__ = ["run_tokenize"]

SIZES = (1_000, 8_000, 32_000)


def _chat(tokenizer: EngineTokenizer, tokens: int, rng: random.Random) -> dict[str, Any]:
    """A multi-turn chat body whose rendered prompt has at least `tokens` token ids."""
    messages = [{"role": "system", "content": sample_text(rng, 60)}]
    while True:
        messages += [{"role": "user", "content": sample_text(rng, 120)},
                     {"role": "assistant", "content": sample_text(rng, 120)}]
        body = {"model": "m", "messages": [*messages, {"role": "user", "content": "why?"}]}
        if len(tokenizer.body_ids(body)) >= tokens:
            return body


def _median_us(calls: Sequence[Callable[[], object]]) -> float:
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


def _variants(body: dict[str, Any], repeats: int, cold: bool,
              first: int = 0) -> list[dict[str, Any]]:
    """Bodies no earlier call saw in full: every message new (cold), or only the last user
    message new (the next turn of a conversation whose history was tokenized before);
    numbered from `first`, so a later series repeats none of an earlier one."""
    out = []
    for i in range(first, first + repeats):
        messages = body["messages"]
        if cold:
            messages = [{**m, "content": f"{i} {m['content']}"} for m in messages]
        else:
            messages = [*messages[:-1], {"role": "user", "content": f"why {i}?"}]
        out.append({**body, "messages": messages})
    return out


def _profile(tokenizer: EngineTokenizer, body: dict[str, Any], repeats: int) -> list[str]:
    """Right after the timed runs of `body`, while its history's pieces are cached."""
    report = []
    for label, cold in (("next turn", False), ("never seen", True)):
        profiler = cProfile.Profile()
        calls = [partial(tokenizer.body_ids, variant)
                 for variant in _variants(body, repeats, cold=cold, first=repeats)]
        profiler.enable()
        for call in calls:
            call()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        report.append(f"profile, 8k chat, {label} ({repeats} calls; tottime s, cumtime s):")
        report += ["  " + line.replace(str(Path.cwd()) + "/", "")[:150] for line in lines[start:]]
    return report


def run_tokenize(family: str = "qwen2.5", repeats: int = 20, profile: bool = False) -> int:
    oracle_module: Any
    try:
        import transformers as oracle_module
    except ImportError:
        oracle_module = None
    with tempfile.TemporaryDirectory() as workdir:
        directory = build_tokenizer_dir(Path(workdir) / family, family, vocab_size=2000)
        tokenizer = load_tokenizer(str(directory))
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        profiled: list[str] = []
        oracle = (oracle_module.AutoTokenizer.from_pretrained(str(directory))
                  if oracle_module is not None else None)
        baseline, _ = decision_latency("prefix_cache", picks=3000)
        print(f"tokenize: {family} tokenizer directory (BPE, vocab 2000), medians of {repeats}; "
              f"baseline: the picker's decision (prefix_cache, 8 workers, 8k-char prompt) "
              f"p50 {baseline:.0f} us")
        print(f"{'tokens':>7} {'chars':>8} {'msgs':>5} {'parse us':>9} {'render us':>10} "
              f"{'cold us':>9} {'rust alone us':>14} {'cold/decision':>14} {'next turn us':>13} "
              f"{'next/decision':>14} {'transformers us':>16} {'transformers/cold':>18}")
        rng = random.Random(0)
        for size in SIZES:
            body = _chat(tokenizer, size, rng)
            raw = json.dumps(body).encode()
            ids = tokenizer.body_ids(body)
            parse = _median_us([partial(parse_request, "/v1/chat/completions", raw, {})
                                for _ in range(repeats)])
            render = _median_us([partial(tokenizer.chat_text, body["messages"])
                                 for _ in range(repeats)])
            # The next turns first, while the history's pieces are the ones cached.
            warm = _median_us([partial(tokenizer.body_ids, variant)
                               for variant in _variants(body, repeats, cold=False)])
            cold = _median_us([partial(tokenizer.body_ids, variant)
                               for variant in _variants(body, repeats, cold=True)])
            text = tokenizer.chat_text(body["messages"])
            alone = _median_us([partial(backend.encode_batch_fast, [text],
                                        add_special_tokens=False) for _ in range(repeats)])
            theirs = ratio = "-"
            if oracle is not None:
                apply = partial(oracle.apply_chat_template, add_generation_prompt=True,
                                tokenize=True, return_dict=False)
                if apply(body["messages"]) != ids:
                    print(f"{size}: transformers' ids differ from the picker's")
                    return 1
                spent = _median_us([partial(apply, variant["messages"])
                                    for variant in _variants(body, repeats, cold=True)])
                theirs, ratio = f"{spent:.0f}", f"{spent / cold:.2f}x"
            print(f"{len(ids):>7} {len(raw):>8} {len(body['messages']):>5} {parse:>9.0f} "
                  f"{render:>10.0f} {cold:>9.0f} {alone:>14.0f} {cold / baseline:>13.0f}x "
                  f"{warm:>13.0f} {warm / baseline:>13.1f}x {theirs:>16} {ratio:>18}")
            if profile and size == 8_000:
                profiled = _profile(tokenizer, body, repeats)
        if profiled:
            print("\n".join(profiled))
    if oracle is None:
        print("transformers is not installed (pip install 'llm-picker[dev]'): no comparison")
    return 0
