"""`llm-picker bench grpc-smg`: Envoy + picker against the SMG gateway on one gRPC sim fleet.

Both gateways take OpenAI chat requests, render the chat template, tokenize, call the engines'
Generate over gRPC and turn the streamed token ids back into SSE: SMG (PyPI `smg`, one Rust
process, `--tokenizer-path`) in front of N gRPC sims, and Envoy with the picker as ext_proc
(the gateway configuration: both bodies FULL_DUPLEX_STREAMED, the picker transcoding) in front
of the same sims, with the same tokenizer directory, prompts and policy (round robin). The
phases alternate (SMG, picker, then picker, SMG, ...) at each concurrency, so a machine shared
with other work weighs on both alike; each phase reports requests/s, TTFT p50/p99 (first SSE
event with content) and the gateway's CPU per request (SMG's process; picker + Envoy).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import (
    ENVOY_GATEWAY,
    Process,
    SimSpec,
    cpu_seconds,
    free_port,
    local_fleet,
    spawn,
    wait_http,
)
from picker_bench.tokenizer_dirs import build_tokenizer_dir, sample_text

__all__ = ["run_grpc_smg"]

MODEL = "grpc-model"
FAMILY = "llama-3.1"


@dataclass(frozen=True)
class Phase:
    gateway: str
    concurrency: int
    requests: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int
    stalls: int  # TTFT over a second: see docs/benchmarks.md on SMG's 5 s stalls
    cpu_ms_per_request: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _bodies(count: int, tokens: int, seed: int) -> list[dict[str, Any]]:
    """Chats of a system and a user message of ~120 words each, all different."""
    rng = random.Random(seed)
    return [{"model": MODEL, "max_tokens": tokens, "stream": True,
             "messages": [{"role": "system", "content": sample_text(rng, 40)},
                          {"role": "user", "content": sample_text(rng, 120)}]}
            for _ in range(count)]


async def _one(client: httpx.AsyncClient, body: dict[str, Any]) -> float | None:
    """TTFT in seconds, None for an error or a stream without content."""
    started = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data: {") and _has_content(line[6:]):
                ttft = time.perf_counter() - started
    return ttft if response.status_code == 200 else None


def _has_content(event: str) -> bool:
    """The event carries text (SMG's first event is the role with empty content)."""
    choices = json.loads(event).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


async def _drive(url: str, bodies: Sequence[dict[str, Any]],
                 concurrency: int) -> tuple[list[float], int, float]:
    queue = list(reversed(bodies))
    ttfts: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while queue:
                ttft = await _one(client, queue.pop())
                if ttft is None:
                    errors += 1
                else:
                    ttfts.append(ttft)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ttfts, errors, time.perf_counter() - started


def _idle_rate(procs: Sequence[Process], seconds: float = 2.0) -> float:
    """CPU seconds per second the gateway spends with no request (health checks, load polls):
    subtracted from each phase, so per-request CPU is the requests' own."""
    before = sum(cpu_seconds(p) for p in procs)
    time.sleep(seconds)
    return (sum(cpu_seconds(p) for p in procs) - before) / seconds


def _phase(gateway: str, url: str, procs: Sequence[Process], idle: float,
           bodies: Sequence[dict[str, Any]], concurrency: int) -> Phase:
    before = sum(cpu_seconds(p) for p in procs)
    ttfts, errors, seconds = asyncio.run(_drive(url, bodies, concurrency))
    cpu = sum(cpu_seconds(p) for p in procs) - before - idle * seconds
    cuts = statistics.quantiles(ttfts, n=100) if len(ttfts) > 1 else [0.0] * 99
    return Phase(gateway, concurrency, len(bodies), seconds, cuts[49] * 1e3, cuts[98] * 1e3,
                 errors, sum(t > 1.0 for t in ttfts), cpu * 1e3 / len(bodies))


def _start_smg(sim_ports: Sequence[int], tokenizer: Path, workdir: Path,
               extra: Sequence[str] = ()) -> tuple[str, Process]:
    port = free_port()
    proc = spawn("smg", [
        sys.executable, "-m", "smg", "launch", "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
        "--worker-urls", *[f"grpc://127.0.0.1:{p}" for p in sim_ports],
        "--tokenizer-path", str(tokenizer), "--policy", "round_robin", "--log-level", "warn",
        *extra],
        workdir)
    wait_http(proc, f"http://127.0.0.1:{port}/health", timeout=60)
    return f"http://127.0.0.1:{port}", proc


def _wait_served(url: str, body: dict[str, Any], timeout: float = 60.0) -> None:
    """SMG registers its workers after /health answers: a request before that is a 503."""
    deadline = time.monotonic() + timeout
    while True:
        answer = loopback().post(f"{url}/v1/chat/completions", json={**body, "stream": False},
                                 timeout=30)
        if answer.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not serving: {answer.status_code} {answer.text[:300]}")
        time.sleep(0.2)


def run_grpc_smg(sims: int = 2, requests: Sequence[int] = (40, 160),
                 levels: Sequence[int] = (1, 16), rounds: int = 3, tokens: int = 64) -> int:
    """`requests[i]` requests per phase at concurrency `levels[i]`; `rounds` alternations."""
    if len(requests) != len(levels):
        print("grpc-smg: --requests needs one count per --concurrency", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-picker-smg-bench-") as root:
        tokenizer = build_tokenizer_dir(Path(root) / "tok", FAMILY)
        ports = [free_port() for _ in range(sims)]
        timing = ["--ttft-ms", "5", "--tpot-ms", "1", "--max-concurrency", "256"]
        specs = [SimSpec(f"g{i}", MODEL, ["--grpc", "--tokenizer", str(tokenizer), *timing],
                         port=port,
                         worker={"url": f"grpc://127.0.0.1:{port}", "connection_mode": "grpc",
                                 "runtime_type": "sglang", "tokenizer_path": str(tokenizer)})
                 for i, port in enumerate(ports)]
        with local_fleet(specs, body_mode="FULL_DUPLEX_STREAMED",
                         envoy_template=ENVOY_GATEWAY,
                         picker_settings={"extproc": {"tls": "self_signed"}},
                         workdir=Path(root)) as fleet:
            smg_url, smg = _start_smg(ports, tokenizer, Path(root))
            try:
                gateways = {"smg": (smg_url, [smg]),
                            "picker": (fleet.envoy_url,
                                       [fleet.processes["picker"], fleet.processes["envoy"]])}
                warm = _bodies(8, tokens, seed=-1)
                idle = {}
                for name, (url, procs) in gateways.items():
                    _wait_served(url, warm[0])
                    asyncio.run(_drive(url, warm, 4))
                    idle[name] = _idle_rate(procs)
                phases = _alternate(gateways, idle, requests, levels, rounds, tokens)
            finally:
                smg.stop()
    _report(phases, sims, tokens, rounds, idle)
    return 1 if any(p.errors for p in phases) else 0


def _alternate(gateways: dict[str, tuple[str, list[Process]]], idle: dict[str, float],
               requests: Sequence[int],
               levels: Sequence[int], rounds: int, tokens: int) -> list[Phase]:
    phases = []
    names = list(gateways)
    for round_ in range(rounds):
        for count, level in zip(requests, levels, strict=True):
            bodies = _bodies(count, tokens, seed=round_ * 1000 + level)
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                url, procs = gateways[name]
                phases.append(_phase(name, url, procs, idle[name], bodies, level))
                last = phases[-1]
                print(f"  round {round_ + 1} c={level} {name}: {last.rps:.1f} req/s, TTFT p50 "
                      f"{last.ttft_p50_ms:.1f} ms", file=sys.stderr)
    return phases


def _report(phases: Sequence[Phase], sims: int, tokens: int, rounds: int,
            idle: dict[str, float]) -> None:
    print(f"grpc-smg: {sims} gRPC sims (--ttft-ms 5 --tpot-ms 1), {FAMILY} tokenizer dir, "
          f"streamed chats of ~160 words, max_tokens {tokens}, round robin; {rounds} rounds "
          f"alternating; CPU net of idle: smg = its process, picker = picker + Envoy")
    print("idle CPU: " + ", ".join(f"{k} {v * 1e3:.0f} ms/s" for k, v in idle.items()))
    print(f"{'gateway':8} {'conc':>4} {'round':>5} {'requests':>8} {'req/s':>7} "
          f"{'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'CPU ms/req':>10} {'TTFT>1s':>7} "
          f"{'errors':>6}")
    per_round: dict[tuple[str, int], list[Phase]] = {}
    for p in phases:
        per_round.setdefault((p.gateway, p.concurrency), []).append(p)
    for (gateway, level), runs in per_round.items():
        for i, p in enumerate(runs):
            print(f"{gateway:8} {level:>4} {i + 1:>5} {p.requests:>8} {p.rps:>7.1f} "
                  f"{p.ttft_p50_ms:>11.1f} {p.ttft_p99_ms:>11.1f} {p.cpu_ms_per_request:>10.2f} "
                  f"{p.stalls:>7} {p.errors:>6}")
    print("picker / smg per round (min-max over rounds):")
    for level in sorted({p.concurrency for p in phases}):
        smg, picker = per_round[("smg", level)], per_round[("picker", level)]
        for label, field in (("req/s", "rps"), ("TTFT p50", "ttft_p50_ms"),
                             ("TTFT p99", "ttft_p99_ms"), ("CPU/req", "cpu_ms_per_request")):
            pairs = [(getattr(a, field), getattr(b, field))
                     for a, b in zip(smg, picker, strict=True)]
            ratios = [theirs_ours[1] / theirs_ours[0] for theirs_ours in pairs if theirs_ours[0]]
            if ratios:
                print(f"  c={level:<3} {label:9} {min(ratios):.2f}x - {max(ratios):.2f}x "
                      f"(median {statistics.median(ratios):.2f}x)")
