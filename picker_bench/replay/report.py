"""What a replay prints per policy, and the side-by-side plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from picker.trace.line import TraceLine
from picker_bench.plot import bar_chart_svg
from picker_bench.replay.fleet import Served, engine_id
from picker_bench.replay.prompts import prompt_shape

__all__ = ["PolicyReport", "format_table", "oracle_hit_rate", "plot_svg", "summarise"]


@dataclass(frozen=True, slots=True)
class PolicyReport:
    policy: str
    requests: int
    refused: int
    hit_rate: float  # cached prompt tokens / prompt tokens, over the fleet
    ttft_p50: float
    ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    # Requests per engine over the mean: 1.0 is perfectly even, `engines` all on one.
    imbalance: float
    shares: tuple[float, ...]  # each engine's share of the requests, in engine order


def _quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarise(policy: str, served: Sequence[Served], engines: int) -> PolicyReport:
    done = [s for s in served if s.worker is not None]
    prompt = sum(s.prompt_tokens for s in done)
    per_engine = Counter(s.worker for s in done)
    counts = [per_engine.get(engine_id(i), 0) for i in range(engines)]
    mean = len(done) / engines if engines else 0.0
    ttfts = [s.ttft_secs for s in done]
    e2es = [s.e2e_secs for s in done]
    return PolicyReport(
        policy, len(served), len(served) - len(done),
        sum(s.cached_tokens for s in done) / prompt if prompt else 0.0,
        _quantile(ttfts, 0.5), _quantile(ttfts, 0.99), _quantile(e2es, 0.5),
        _quantile(e2es, 0.99), max(counts) / mean if mean else 0.0,
        tuple(c / len(done) if done else 0.0 for c in counts))


def oracle_hit_rate(lines: Sequence[TraceLine], block_tokens: int) -> float:
    """The hit rate with one cache that never forgets: every block seen before hits. No
    routing can beat it; the gap to it is what routing and cache sizes lose."""
    seen: set[int] = set()
    hit = total = 0
    for index, line in enumerate(lines):
        shape = prompt_shape(line, index, block_tokens)
        blocks = shape.engine_blocks(block_tokens)
        leading = 0
        for block in blocks:
            if block not in seen:
                break
            leading += 1
        seen.update(blocks)
        hit += min(shape.tokens, leading * block_tokens)
        total += shape.tokens
    return hit / total if total else 0.0


def format_table(reports: Sequence[PolicyReport], oracle: float) -> str:
    head = (f"{'policy':<16} {'requests':>8} {'refused':>7} {'hit rate':>8} {'oracle':>6} "
            f"{'ttft p50':>9} {'ttft p99':>9} {'e2e p50':>8} {'e2e p99':>8} {'max/mean':>8}  "
            "requests per engine")
    rows = [head]
    for r in reports:
        rows.append(f"{r.policy:<16} {r.requests:>8} {r.refused:>7} {r.hit_rate:>8.3f} "
                    f"{oracle:>6.3f} {r.ttft_p50:>8.3f}s {r.ttft_p99:>8.3f}s "
                    f"{r.e2e_p50:>7.2f}s {r.e2e_p99:>7.2f}s {r.imbalance:>8.2f}  "
                    + " ".join(f"{s:.2f}" for s in r.shares))
    return "\n".join(rows)


def plot_svg(title: str, reports: Sequence[PolicyReport], oracle: float) -> str:
    """Hit rate, TTFT p50/p99 and end-to-end p99 side by side, one bar per policy."""
    return bar_chart_svg(f"{title} (oracle hit rate {oracle:.3f})",
                         [r.policy for r in reports], [
        ("prefix hit rate", "share", [r.hit_rate for r in reports]),
        ("TTFT p50", "s", [r.ttft_p50 for r in reports]),
        ("TTFT p99", "s", [r.ttft_p99 for r in reports]),
        ("e2e p99", "s", [r.e2e_p99 for r in reports]),
    ])
