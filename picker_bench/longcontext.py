"""`llm-picker bench overhead --long-context`: long prompts through Envoy + picker vs sglang-router.

Four near-instant simulated engines (`--profile instant`) serve streaming /v1/completions;
prompts are 220 KB and 1 MB, made of a few shared documents and a short question, so the
prefix-aware policies have something to find. Both routers route by prefix: the picker with
`prefix_cache` (approximate index) behind Envoy (BUFFERED ext_proc), sglang-router with
`cache_aware`. TTFT is when the first byte of the streamed body reaches the client.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from picker_bench.stack import (
    Process,
    SimSpec,
    cpu_seconds,
    free_port,
    free_port_run,
    render_authz_config,
    render_envoy_config,
    start_envoy,
    start_picker,
    start_sglang_router,
    start_sim,
    wait_listening,
    wait_picker_hosts,
)

__all__ = ["LongResult", "run_long_context"]

MODEL = "sim-model"
ENGINES = 4
DOCUMENTS = 8
# One level gives up after this long, whatever is left: runs stay bounded on a busy machine.
LEVEL_TIMEOUT_S = 180.0


def _requests(chars: int, count: int) -> list[bytes]:
    """HTTP/1.1 requests: document i % DOCUMENTS, then question i (built before timing)."""
    words = ["the", "context", "of", "a", "long", "document", "tokens", "cache", "engine"]
    documents = [" ".join(random.Random(d).choices(words, k=chars // 5))[:chars]
                 for d in range(DOCUMENTS)]
    out = []
    for i in range(count):
        body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 4,
                           "prompt": documents[i % DOCUMENTS] + f"\nQuestion {i}?"}).encode()
        out.append(b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                   b"content-type: application/json\r\ncontent-length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
    return out


async def _streamed(reader: asyncio.StreamReader, started: float) -> tuple[int, float]:
    """Read one response; (status, seconds to the first body byte)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = dict(line.lower().split(b":", 1) for line in lines[1:] if b":" in line)
    length = headers.get(b"content-length")
    if length is not None:
        await reader.readexactly(int(length))
        return status, time.perf_counter() - started
    ttft = None
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if ttft is None:
            ttft = time.perf_counter() - started
        if size == 0:
            return status, ttft


@dataclass
class LongResult:
    router: str
    chars: int
    concurrency: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    rps: float
    errors: int
    # CPU per measured request (ms) of the router's processes: the picker's (all of `serve
    # --workers N`'s) and its Envoy's, or sglang-router's.
    cpu_ms: dict[str, float]


async def _load(port: int, concurrency: int, requests: list[bytes]
                ) -> tuple[list[float], float, int]:
    ttfts: list[float] = []
    errors = 0
    queue = iter(requests)

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                started = time.perf_counter()
                writer.write(request)
                status, ttft = await _streamed(reader, started)
                ttfts.append(ttft)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))),
                           LEVEL_TIMEOUT_S)
    return ttfts, time.perf_counter() - started, errors


@contextmanager
def _router(name: str, sims: list[SimSpec], workdir: Path,
            processes: int = 1) -> Iterator[tuple[int, dict[str, Process]]]:
    """The router listening; yields its port and its processes by role."""
    with ExitStack() as stack:
        listen = free_port()
        if name == "sglang":
            urls = [f"http://127.0.0.1:{s.port}" for s in sims]
            router = start_sglang_router(listen, urls, "cache_aware", workdir,
                                         name="sglang-router-long")
            stack.callback(router.stop)
            yield listen, {"sglang": router}
        else:
            picker_port = free_port_run(processes)
            config = {"extproc": {"port": picker_port}, "admin": {"port": free_port()},
                      "policy": "prefix_cache", "prefix": {"enabled": True},
                      "health": {"enabled": False},
                      "workers": [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id,
                                   "models": [MODEL]} for s in sims]}
            authz_port = free_port_run(processes) if name.startswith("authz") else None
            picker = start_picker(config, workdir, name="picker-long", processes=processes,
                                  authz_port=authz_port)
            stack.callback(picker.stop)
            envoy_admin = free_port()
            if authz_port is not None:
                bootstrap = render_authz_config(
                    listen_port=listen, admin_port=envoy_admin, picker_port=picker_port,
                    authz_port=authz_port, processes=processes)
            else:
                bootstrap = render_envoy_config(
                    listen_port=listen, admin_port=envoy_admin, picker_port=picker_port,
                    replica_ports=range(picker_port + 1, picker_port + processes))
            envoy = start_envoy(bootstrap, workdir, name="envoy-long")
            stack.callback(envoy.stop)
            if authz_port is not None:
                wait_listening([authz_port + i for i in range(processes)])
            elif processes > 1:
                wait_picker_hosts(f"http://127.0.0.1:{envoy_admin}", processes)
            yield listen, {"envoy": envoy, "picker": picker}


def run_long_context(sizes: list[int], levels: list[int], requests: int,
                     workdir: Path, picker_workers: int = 1) -> list[LongResult]:
    """Each router, each prompt size, each concurrency: `requests` after a 2x-concurrency
    warm-up (which also fills the routers' prefix trees). The picker runs behind Envoy twice:
    over ext_proc (BUFFERED, rows `picker`) and over ext_authz (`--mode authz`, rows `authz`).
    `picker_workers`: it runs `serve --workers N` (rows pickerxN, authzxN)."""
    results = []
    with ExitStack() as stack:
        sims = [SimSpec(worker_id=f"e{i}", model=MODEL, args=["--profile", "instant"])
                for i in range(ENGINES)]
        for spec in sims:
            stack.callback(start_sim(spec, workdir).stop)
        suffix = "" if picker_workers == 1 else f"x{picker_workers}"
        for name in (f"picker{suffix}", f"authz{suffix}", "sglang"):
            with _router(name, sims, workdir, picker_workers) as (port, parts):
                for chars in sizes:
                    for level in levels:
                        batch = _requests(chars, requests + 2 * level)
                        asyncio.run(_load(port, level, batch[:2 * level]))
                        cpu = {role: cpu_seconds(proc) for role, proc in parts.items()}
                        ttfts, elapsed, errors = asyncio.run(
                            _load(port, level, batch[2 * level:]))
                        cpu_ms = {role: (cpu_seconds(proc) - cpu[role]) * 1e3 / len(ttfts)
                                  for role, proc in parts.items()}
                        cuts = statistics.quantiles(ttfts, n=100)
                        results.append(LongResult(name, chars, level, cuts[49] * 1e3,
                                                  cuts[98] * 1e3, len(ttfts) / elapsed, errors,
                                                  cpu_ms))
                        print(f"  measured {name} {chars} chars at concurrency {level}",
                              file=sys.stderr)
    return results


def print_long_context(results: list[LongResult]) -> None:
    """Per size and concurrency, the picker's ratios to sglang-router's of the same run, and
    each router process's CPU per request."""
    peer = {(r.chars, r.concurrency): r for r in results if r.router == "sglang"}
    print(f"{'router':<9}{'chars':>8}{'conc':>5}{'ttft p50 ms':>12}{'ttft p99 ms':>12}"
          f"{'req/s':>8}{'errors':>7}{'rps vs sglang':>14}{'p50 vs sglang':>14}"
          f"  CPU ms/req")
    for r in results:
        base = peer.get((r.chars, r.concurrency))
        rps = f"{r.rps / base.rps:.2f}x" if base else "-"
        p50 = f"{r.ttft_p50_ms / base.ttft_p50_ms:.2f}x" if base else "-"
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in r.cpu_ms.items())
        print(f"{r.router:<9}{r.chars:>8}{r.concurrency:>5}{r.ttft_p50_ms:>12.1f}"
              f"{r.ttft_p99_ms:>12.1f}{r.rps:>8.1f}{r.errors:>7}{rps:>14}{p50:>14}  {cpu}")
