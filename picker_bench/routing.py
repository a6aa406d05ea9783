"""`llm-picker bench routing`: routing quality of each policy on the same seeded workload.

Every contender gets fresh simulated engines (empty caches) and the same arrivals; picker
policies run through the real Envoy + `llm-picker serve`, sglang-router (Rust, cache_aware) is
pointed at its own fresh engines. Hit rates come from the engines' own metrics.

`fleet="hetero"`: half the engines run at half speed (prefill rate, decode step and fixed
time to first token), as a fleet mixing GPU generations does, and every engine schedules
prefills and decodes in one per-step token budget as vLLM does (profile `8b-h100-batched`);
the workload then has more and longer multi-turn sessions. Beside hit rate and latency the
report counts session stickiness (follow-up turns served by the engine that served the
previous turn) and group splits (system prompt groups and sessions served by more than one
engine: each split re-prefills the prefix).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from picker.routing.control_headers import SLO_TTFT
from picker_bench.decision import decision_latency
from picker_bench.loopback import loopback
from picker_bench.mooncake import read_trace, trace_workload
from picker_bench.plot import bar_chart_svg
from picker_bench.stack import (
    SimSpec,
    duplex_both_ways,
    free_port,
    render_envoy_config,
    replica_configs,
    start_envoy,
    start_picker,
    start_sglang_router,
    start_sim,
)
from picker_bench.workload import Driver, Served, Workload, make_workload, oracle_hit_rate
from picker_sim.engine import PROFILES, prompt_tokens
from picker_sim.hf_twin import write_hf_twin

__all__ = ["run_routing"]

# Sim profile per fleet. The heterogeneous fleet's engines schedule as vLLM does (one token
# budget per step, picker_sim.scheduler), so prefills queue behind each other and "how much
# prefill is ahead on that engine" decides the TTFT tail; the homogeneous fleet keeps the
# profile its earlier results were measured with.
PROFILE = {"homogeneous": "8b-h100-like", "hetero": "8b-h100-batched"}
# Contenders that need parameters; others are policy names with their defaults (weighted:
# its default profile, which reads the prefix index and the learned engine speeds).
_POLICY_CONFIG: dict[str, Any] = {}
# Fixed time to first token of the fast engines: scheduling and sampling on a real engine, so
# the routing (not the proxy's milliseconds) decides the heterogeneous fleet's TTFT p50.
_HETERO_TTFT_MS = 20.0
MAX_OUTSTANDING = 256
WORKER_HEADER = "x-picker-sim-worker"


@dataclass
class Report:
    contender: str
    sticky: int  # follow-up turns on the previous turn's engine
    follow_ups: int
    split_groups: int  # groups served by more than one engine
    groups: int
    hit_rate: float
    ttft_p50: float
    ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    throughput: float
    max_per_engine: int
    min_per_engine: int
    errors: int
    # Heterogeneous fleet: successful requests' TTFTs per "fast warm", "slow cold", ... (engine
    # half, and whether the request was the first of its group); empty otherwise.
    ttft_by_class: dict[str, list[float]]


async def _one(client: httpx.AsyncClient, body: dict[str, Any]) -> Served:
    started = time.perf_counter()
    ttft = 0.0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not ttft and line.startswith("data: {") and '"content"' in line:
                ttft = time.perf_counter() - started
    e2e = time.perf_counter() - started
    return Served(response.headers.get(WORKER_HEADER, "-"), response.status_code,
                   ttft or e2e, e2e)


async def _drive(base_url: str, workload: Workload,
                 headers: dict[str, str]) -> tuple[list[Served], float]:
    gate = asyncio.Semaphore(MAX_OUTSTANDING)
    limits = httpx.Limits(max_connections=MAX_OUTSTANDING, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits,
                                 headers=headers) as client:
        started = time.perf_counter()

        async def scheduled(at: float, body: dict[str, Any]) -> Served:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
            async with gate:
                return await _one(client, body)

        outcomes = await asyncio.gather(
            *(scheduled(at, body) for at, body in zip(workload.arrivals, workload.bodies,
                                                       strict=True)))
        return list(outcomes), time.perf_counter() - started


def _engine_counters(url: str) -> tuple[float, float, float]:
    """(prompt tokens looked up, prompt tokens hit, requests) from one engine."""
    queries = hits = requests = 0.0
    for family in text_string_to_metric_families(loopback().get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_queries_total":
                queries += sample.value
            elif sample.name == "vllm:prefix_cache_hits_total":
                hits += sample.value
            elif sample.name == "vllm:request_success_total":
                requests += sample.value
    return queries, hits, requests


@dataclass(frozen=True)
class _Variant:
    """A contender's name taken apart: the router (a policy, `sglang` or `litellm:<strategy>`)
    and `+`-joined options in any order.

    kv_events: the engines publish KV events and the picker follows them (sync index, the
    engines' /tokenize as tokenizer) instead of learning from its own picks. gateway: Envoy
    configured as Gateway API inference gateways do (both bodies FULL_DUPLEX_STREAMED), so every
    response passes through the picker and it learns each engine's TTFT and prefill rate from
    the first responses instead of from metrics scrapes. slo<ms>: every request carries
    x-slo-ttft-ms."""

    router: str
    kv_events: bool = False
    gateway: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, name: str) -> _Variant:
        router, *options = name.split("+")
        variant = cls(router)
        for option in options:
            slo = re.fullmatch(r"slo(\d+)", option)
            if option == "kv_events":
                variant = replace(variant, kv_events=True)
            elif option == "gateway":
                variant = replace(variant, gateway=True)
            elif slo is not None:
                variant = replace(variant, headers=((SLO_TTFT, slo.group(1)),))
            else:
                raise ValueError(f"contender {name!r}: unknown option +{option} (kv_events, "
                                 "gateway, slo<ms>)")
        return variant


@contextmanager
def _contender(name: str, engines: int, workdir: Path, workload: Workload,
               cache_blocks: int | None = None, kv_tokenizer: str = "hf",
               fleet: str = "homogeneous", replicas: int = 1,
               share_picks: bool = True) -> Iterator[tuple[Driver, list[str]]]:
    """Fresh engines plus the router under test (`_Variant`); yields (workload driver, engine
    urls). `replicas` pickers behind the one Envoy, sharing their approximate-index picks with
    `share_picks`."""
    variant = _Variant.parse(name)
    kv, router, label = variant.kv_events, variant.router, name.replace("+", "-")
    with ExitStack() as stack:
        sims = [SimSpec(f"e{i}", "sim-model", ["--profile", PROFILE[fleet]])
                for i in range(engines)]
        kv_ports: list[tuple[int, int]] = []
        for i, spec in enumerate(sims):
            args = list(spec.args) + _speed_args(fleet, i, engines)
            if cache_blocks:
                args += ["--cache-blocks", str(cache_blocks)]
            if kv:
                kv_ports.append((free_port(), free_port()))
                args += ["--kv-events-port", str(kv_ports[-1][0]),
                         "--kv-replay-port", str(kv_ports[-1][1])]
            spec.args = args
            stack.callback(start_sim(spec, workdir).stop)
        urls = [f"http://127.0.0.1:{s.port}" for s in sims]
        if router.startswith("litellm:"):
            from picker_bench.litellm_frontend import litellm_driver

            yield litellm_driver(router.removeprefix("litellm:"), urls), urls
            return
        listen = free_port()
        if router == "sglang":
            stack.callback(start_sglang_router(listen, urls, "cache_aware", workdir).stop)
            # Workers are added asynchronously after start-up; wait until one request routes.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                probe = loopback().post(f"http://127.0.0.1:{listen}/v1/chat/completions", json={
                    "model": "sim-model", "messages": [{"role": "user", "content": "warm"}],
                    "max_tokens": 1}, timeout=10)
                if probe.status_code == 200:
                    break
                time.sleep(0.5)
            yield _http_driver(f"http://127.0.0.1:{listen}"), urls
            return
        workers: list[dict[str, Any]] = [{"url": u, "id": s.worker_id, "models": ["sim-model"]}
                                         for u, s in zip(urls, sims, strict=True)]
        prefix: dict[str, Any] = {"enabled": True}
        if kv:
            block_tokens = int(PROFILES[PROFILE[fleet]]["block_tokens"])
            prefix.update(index="kv_events", tokenizer=_engine_tokenizer(
                kv_tokenizer, workload, workdir, stack))
            for worker, (events, replay) in zip(workers, kv_ports, strict=True):
                worker.update(kv_block_size=block_tokens, kv_events={
                    "endpoint": f"tcp://127.0.0.1:{events}",
                    "replay_endpoint": f"tcp://127.0.0.1:{replay}"})
        config = {"policy": _POLICY_CONFIG.get(router, router), "prefix": prefix,
                  "workers": workers}
        pickers = replica_configs(config, replicas, share_picks and replicas > 1 and not kv)
        for i, picker in enumerate(pickers):
            stack.callback(start_picker(picker, workdir, name=f"picker-{label}-{i}").stop)
        ports = [picker["extproc"]["port"] for picker in pickers]
        envoy = render_envoy_config(listen_port=listen, admin_port=free_port(),
                                    picker_port=ports[0], replica_ports=ports[1:])
        if variant.gateway:
            duplex_both_ways(envoy)
        stack.callback(start_envoy(envoy, workdir, name=f"envoy-{label}").stop)
        yield _http_driver(f"http://127.0.0.1:{listen}", dict(variant.headers)), urls


def _speed_args(fleet: str, index: int, engines: int) -> list[str]:
    """Sim flags of engine `index`: in a heterogeneous fleet the second half runs at half
    speed."""
    if fleet != "hetero":
        return []
    profile = PROFILES[PROFILE[fleet]]
    slow = 2.0 if index >= engines // 2 else 1.0
    return ["--ttft-ms", str(_HETERO_TTFT_MS * slow),
            "--prefill-tokens-per-sec", str(float(profile["prefill_tokens_per_sec"]) / slow),
            "--tpot-ms", str(float(profile["tpot_ms"]) * slow)]


def _stickiness(workload: Workload, outcomes: list[Served]) -> tuple[int, int, int, int]:
    """(follow-up turns on the previous turn's engine, follow-up turns, groups split over
    engines, groups), over the requests that succeeded."""
    engines: dict[str, set[str]] = {}
    turns: dict[tuple[str, int], str] = {}
    for (group, turn), outcome in zip(workload.keys, outcomes, strict=True):
        if outcome.status == 200:
            engines.setdefault(group, set()).add(outcome.worker)
            turns[(group, turn)] = outcome.worker
    follow_ups = [(worker, turns.get((group, turn - 1)))
                  for (group, turn), worker in turns.items() if turn]
    sticky = sum(1 for worker, previous in follow_ups if worker == previous)
    splits = sum(1 for served in engines.values() if len(served) > 1)
    return sticky, len(follow_ups), splits, len(engines)


def _engine_tokenizer(kind: str, workload: Workload, workdir: Path,
                      stack: ExitStack) -> dict[str, Any]:
    """Tokenizer settings that give the sims' own token ids.

    remote: a sim of its own serving /tokenize, as a tokenizer service would be deployed.
    hf: a tokenizer.json reproducing the sims' toy tokenizer over the workload's words;
    in-process, so the comparison with the approximate index is not about an HTTP round trip."""
    if kind == "remote":
        service = SimSpec("tokenizer", "sim-model")
        stack.callback(start_sim(service, workdir).stop)
        return {"kind": "remote", "endpoint": f"http://127.0.0.1:{service.port}"}
    return write_hf_twin((word for body in workload.bodies for word in prompt_tokens(body)),
                         workdir)


def _http_driver(base_url: str, headers: dict[str, str] | None = None) -> Driver:
    return lambda workload: _drive(base_url, workload, headers or {})


def _quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _measure(name: str, engines: int, workload: Workload, workdir: Path,
             cache_blocks: int | None = None, kv_tokenizer: str = "hf",
             fleet: str = "homogeneous", replicas: int = 1, share_picks: bool = True) -> Report:
    with _contender(name, engines, workdir, workload, cache_blocks,
                    kv_tokenizer, fleet, replicas, share_picks) as (drive, engine_urls):
        before = [_engine_counters(u) for u in engine_urls]
        outcomes, elapsed = asyncio.run(drive(workload))
        after = [_engine_counters(u) for u in engine_urls]
    queries = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    hits = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    ok = [o for o in outcomes if o.status == 200]
    counts = [int(a[2] - b[2]) for a, b in zip(after, before, strict=True)]
    sticky, follow_ups, splits, groups = _stickiness(workload, outcomes)
    by_class = _ttft_by_class(workload, outcomes, engines) if fleet == "hetero" else {}
    return Report(
        contender=name, sticky=sticky, follow_ups=follow_ups, split_groups=splits,
        groups=groups, hit_rate=hits / queries if queries else 0.0,
        ttft_p50=_quantile([o.ttft for o in ok], 50), ttft_p99=_quantile([o.ttft for o in ok], 99),
        e2e_p50=_quantile([o.e2e for o in ok], 50), e2e_p99=_quantile([o.e2e for o in ok], 99),
        throughput=len(ok) / elapsed, max_per_engine=max(counts), min_per_engine=min(counts),
        errors=len(outcomes) - len(ok), ttft_by_class=by_class,
    )


TTFT_CLASSES = ("fast warm", "fast cold", "slow warm", "slow cold")


def _ttft_by_class(workload: Workload, outcomes: list[Served],
                   engines: int) -> dict[str, list[float]]:
    """TTFTs split by where a request ran (the fleet's fast or slow half, `_speed_args`) and
    whether any engine could hold its prefix yet (cold: the first request of its group): what
    bounds a router's TTFT p50 on the heterogeneous fleet."""
    fast = {f"e{i}" for i in range(engines // 2)}
    seen: set[str] = set()
    by_class: dict[str, list[float]] = {name: [] for name in TTFT_CLASSES}
    for (group, _), outcome in zip(workload.keys, outcomes, strict=True):
        cold = group not in seen
        seen.add(group)
        if outcome.status == 200:
            half = "fast" if outcome.worker in fast else "slow"
            by_class[f"{half} {'cold' if cold else 'warm'}"].append(outcome.ttft)
    return by_class


def _print_classes(reports: list[Report], base: Report) -> None:
    """Per class: requests, their TTFT p50, and how many came in under 0.9x of the baseline's
    TTFT p50 (issue 19's target: more than half of all requests must)."""
    threshold = 0.9 * base.ttft_p50
    print(f"TTFT by engine half and cache state: requests / p50 / under {threshold * 1000:.0f}ms "
          f"(0.9x {base.contender}'s TTFT p50)")
    width = max(14, *(len(r.contender) + 1 for r in reports))
    print(f"{'contender':<{width}}" + "".join(f"{name:>20}" for name in TTFT_CLASSES)
          + f"{'under, all':>12}")
    for r in reports:
        cells, under = [], 0
        for name in TTFT_CLASSES:
            values = r.ttft_by_class[name]
            fast_enough = sum(1 for v in values if v < threshold)
            under += fast_enough
            p50 = f"{statistics.median(values) * 1000:.0f}ms" if values else "-"
            cells.append(f"{f'{len(values)} / {p50} / {fast_enough}':>20}")
        total = sum(len(v) for v in r.ttft_by_class.values())
        print(f"{r.contender:<{width}}" + "".join(cells) + f"{f'{under}/{total}':>12}")


LITELLM_CONTENDERS = ["litellm:simple-shuffle", "litellm:least-busy", "litellm:prefix_cache"]


def run_routing(engines: int = 8, groups: int = 64, rate: float = 40.0,
                contenders: list[str] | None = None, seed: int = 0,
                plot: str | None = None, frontend: str = "envoy",
                cache_blocks: int | None = None, kv_tokenizer: str = "hf",
                fleet: str = "homogeneous", chars_per_token: int = 6, replicas: int = 1,
                share_picks: bool = True, trace: str | None = None,
                requests: int | None = None) -> int:
    """`trace`: a Mooncake FAST'25 trace file (picker_bench.mooncake) to replay, its first
    `requests` records, instead of the seeded synthetic workload."""
    default = LITELLM_CONTENDERS if frontend == "litellm" else [
        "round_robin", "least_load", "prefix_cache", "cache_aware", "weighted",
        "prefix_cache+kv_events", "weighted+kv_events", "sglang"]
    names = contenders or default
    try:
        for name in names:  # a typo fails now, not after the contenders before it have run
            _Variant.parse(name)
    except ValueError as error:
        print(f"llm-picker bench routing: {error}", file=sys.stderr)
        return 2
    # The heterogeneous fleet's traffic is session-heavy: sessions resending their history.
    sessions = {"conversations": 48, "turns": 6} if fleet == "hetero" else {}
    if trace is not None:
        try:
            records = read_trace(Path(trace), requests)
        except (OSError, ValueError) as error:
            print(f"llm-picker bench routing: --trace: {error}", file=sys.stderr)
            return 2
        workload = trace_workload(records, rate=rate, chars_per_token=chars_per_token,
                                  seed=seed)
        shape = (f"the first {len(records)} records of Mooncake trace {trace} "
                 f"({len({key for key, _ in workload.keys})} groups)")
    else:
        workload = make_workload(seed=seed, groups=groups, rate=rate,
                                 chars_per_token=chars_per_token, **sessions)
        shape = f"{groups} system prompts, {sessions.get('conversations', 16)} sessions"
    oracle = oracle_hit_rate(workload, int(PROFILES[PROFILE[fleet]]["block_tokens"]))
    cache = cache_blocks or int(PROFILES[PROFILE[fleet]]["cache_blocks"])
    print(f"workload: {len(workload.bodies)} streaming chat requests at {rate}/s, {shape}, "
          f"~{chars_per_token} characters per token, {engines} engines ({PROFILE[fleet]}, "
          f"{cache} cache blocks each{', half of them at half speed' if fleet == 'hetero' else ''}"
          f"); oracle hit rate {oracle:.1%} (unbounded caches)", flush=True)
    for policy in ("round_robin", "prefix_cache", "cache_aware"):
        p50, p99 = decision_latency(policy)
        print(f"decision latency, in-process, 8 workers, 8k-char prompt, {policy}: "
              f"p50 {p50:.0f} us, p99 {p99:.0f} us", flush=True)
    if frontend == "litellm":
        from picker_bench.litellm_frontend import selection_overhead

        for strategy in ("simple-shuffle", "prefix_cache"):
            p50, p99 = selection_overhead(strategy)
            print(f"LiteLLM deployment selection, 8 deployments, 8k-char prompt, {strategy}: "
                  f"p50 {p50:.0f} us, p99 {p99:.0f} us", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-routing-"))
    reports = []
    for name in names:
        reports.append(_measure(name, engines, workload, workdir, cache_blocks, kv_tokenizer,
                                fleet, replicas, share_picks))
        print(f"  measured {name}", file=sys.stderr, flush=True)
    base = next((r for r in reports if r.contender in ("sglang", "litellm:least-busy")),
                reports[0])
    width = max(14, *(len(r.contender) + 1 for r in reports))
    print(f"{'contender':<{width}}{'hit rate':>9}{'of oracle':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'e2e p50':>9}{'e2e p99':>9}{'req/s':>7}{'max/min':>9}{'errors':>7}"
          f"{'sticky':>10}{'split':>7}  vs {base.contender}: hit, TTFT p50, p99")
    for r in reports:
        print(f"{r.contender:<{width}}{r.hit_rate:>9.1%}{r.hit_rate / oracle:>10.0%}"
              f"{r.ttft_p50 * 1000:>8.0f}ms{r.ttft_p99 * 1000:>8.0f}ms"
              f"{r.e2e_p50 * 1000:>7.0f}ms{r.e2e_p99 * 1000:>7.0f}ms{r.throughput:>7.1f}"
              f"{f'{r.max_per_engine}/{r.min_per_engine}':>9}{r.errors:>7}"
              f"{f'{r.sticky}/{r.follow_ups}':>10}{f'{r.split_groups}/{r.groups}':>7}"
              f"  {r.hit_rate / base.hit_rate if base.hit_rate else 0:>5.2f}x"
              f" {r.ttft_p50 / base.ttft_p50:>5.2f}x {r.ttft_p99 / base.ttft_p99:>5.2f}x")
    if fleet == "hetero":
        _print_classes(reports, base)
    if plot:
        Path(plot).write_text(bar_chart_svg(
            f"Routing quality, {len(workload.bodies)} shared-prefix chat requests, "
            f"{engines} simulated engines",
            [r.contender for r in reports],
            [("hit rate", "% of prompt tokens", [100 * r.hit_rate for r in reports]),
             ("TTFT p50", "ms", [1000 * r.ttft_p50 for r in reports]),
             ("TTFT p99", "ms", [1000 * r.ttft_p99 for r in reports])],
        ))
        print(f"plot written to {plot}")
    return 0 if all(r.errors == 0 for r in reports) else 1
