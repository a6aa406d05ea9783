"""`llm-picker bench overhead`: latency and throughput the picker adds behind Envoy.

All scenarios run in one invocation against the same upstream, so ratios are comparable even on
a noisy machine:

  envoy     client -> Envoy -> upstream                       (no ext_proc: the baseline)
  buffered  client -> Envoy -> ext_proc(picker, BUFFERED) -> upstream
  bare      the same Envoy, its ext_proc answered by the least a Python router does
            (picker_bench.bare_router: headers read, body decoded, one destination)
  buffered2 the same with `serve --workers 2` (Envoy round-robins streams over both processes)
  duplex    client -> Envoy -> ext_proc(picker, FULL_DUPLEX_STREAMED request body) -> upstream
  duplex2   the same with the response body FULL_DUPLEX_STREAMED too (what gateways generate:
            every response chunk goes through the picker and back)
  authz     client -> Envoy -> ext_authz(picker's HTTP check, body included) -> upstream,
            the picker releasing slots from Envoy's gRPC access log (envoy/envoy-authz.yaml)
  authz2    the same with `serve --mode authz --workers 2`
  authz-floor  the same Envoy configuration, its checks answered by an Envoy (direct_response,
            no picker, no access log): what the ext_authz round trip itself adds
  sglang    client -> sglang-router (Rust, round_robin) -> upstream

The upstream is an Envoy answering a fixed chat completion (direct_response), so neither the
upstream nor Python on the server side is what gets measured. The load generator is a small
keep-alive HTTP/1.1 client on raw asyncio sockets (httpx would cost more than the picker).

For the ext_proc scenarios the first table also shows the floor of grpc.aio itself, measured in
the same run: a server that echoes bytes (picker_bench.grpc_echo) driven with one stream per
request carrying as many messages as Envoy sent the picker per request, at the same concurrency.
The picker's CPU per request over that floor is what its own work costs on top of the gRPC
runtime it cannot avoid.

`stream` is a second table: 200-token streamed answers from a simulated engine (profile
8b-h100-like), Envoy alone (static cluster) against Envoy + picker with both bodies duplex,
with the picker's CPU per ext_proc message next to the floor of grpc.aio itself, measured in
the same run: a server echoing each message and nothing else (picker_bench.grpc_echo).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picker_bench.grpc_echo import drive, drive_streams
from picker_bench.longcontext import print_long_context, run_long_context
from picker_bench.loopback import loopback
from picker_bench.stack import (
    Process,
    SimSpec,
    cpu_seconds,
    duplex_both_ways,
    free_port,
    free_port_run,
    render_authz_config,
    render_envoy_config,
    spawn,
    start_envoy,
    start_picker,
    start_sglang_router,
    start_sim,
    wait_listening,
    wait_picker_hosts,
)

__all__ = ["ext_proc_messages", "run_overhead"]

MODEL = "bench-model"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}],
     "max_tokens": 8}
).encode()
COMPLETION = json.dumps(
    {"id": "bench", "object": "chat.completion", "model": MODEL,
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine."},
                  "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}}
)


def _upstream_config(port: int, admin_port: int) -> dict[str, Any]:
    """An Envoy that answers every request itself: a fast, predictable fake engine."""
    def answer(prefix: str, body: str) -> dict[str, Any]:
        return {"match": {"prefix": prefix},
                "direct_response": {"status": 200, "body": {"inline_string": body}},
                "response_headers_to_add": [{"header": {"key": "content-type",
                                                        "value": "application/json"}}]}

    return _direct_envoy(port, admin_port, [
        answer("/health", "{}"),
        answer("/v1/models", json.dumps({"object": "list", "data": [{"id": MODEL}]})),
        answer("/get_model_info", json.dumps({"model_path": MODEL})),
        answer("/get_server_info", "{}"),
        answer("/", COMPLETION),
    ])


def _check_floor_config(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """An Envoy answering every ext_authz check with 200 and the upstream's address at once:
    the cost of the ext_authz round trip with a check server that costs nothing."""
    return _direct_envoy(port, admin_port, [{
        "match": {"prefix": "/"}, "direct_response": {"status": 200},
        "response_headers_to_add": [{"header": {
            "key": "x-gateway-destination-endpoint", "value": f"127.0.0.1:{upstream_port}"}}]}])


def _direct_envoy(port: int, admin_port: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager}]}],
        }]},
    }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (content-length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _load(port: int, concurrency: int, requests: int,
                body: bytes = BODY) -> tuple[list[float], float, int]:
    """`requests` POSTs over `concurrency` keep-alive connections; latencies in seconds."""
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body
    )
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 300)
    return latencies, time.perf_counter() - started, errors


@dataclass
class Result:
    scenario: str
    concurrency: int
    p50_us: float
    p99_us: float
    rps: float
    errors: int
    picker_cpu_us: float | None = None  # picker CPU per request during the measured load
    messages: float | None = None  # ext_proc messages Envoy sent the picker per request
    floor_cpu_us: float | None = None  # grpc.aio echo CPU per stream of as many messages


def _measure(scenario: str, port: int, concurrency: int, requests: int,
             picker: Process | None, envoy_admin: int | None = None) -> Result:
    """One scenario at one concurrency; with `envoy_admin` (an ext_proc scenario), the
    messages Envoy sent the picker per request too."""
    asyncio.run(_load(port, concurrency, min(200, requests)))  # warm connections and caches
    cpu = cpu_seconds(picker) if picker is not None else 0.0
    sent = ext_proc_messages(envoy_admin)[0] if envoy_admin is not None else 0
    latencies, elapsed, errors = asyncio.run(_load(port, concurrency, requests))
    cuts = statistics.quantiles(latencies, n=100)
    result = Result(scenario, concurrency, cuts[49] * 1e6, cuts[98] * 1e6,
                    len(latencies) / elapsed, errors)
    if picker is not None:
        result.picker_cpu_us = (cpu_seconds(picker) - cpu) * 1e6 / len(latencies)
    if envoy_admin is not None:
        result.messages = (ext_proc_messages(envoy_admin)[0] - sent) / len(latencies)
    return result


def _measure_floor(result: Result, echo: Process, echo_port: int, requests: int) -> None:
    """The grpc.aio echo floor for `result`: one stream per request with as many messages as
    Envoy sent the picker per request (rounded), at the same concurrency."""
    assert result.messages is not None
    per_stream = max(1, round(result.messages))
    asyncio.run(drive_streams(echo_port, result.concurrency, min(200, requests), per_stream,
                              256))  # warm the channel
    cpu = cpu_seconds(echo)
    streams = asyncio.run(drive_streams(echo_port, result.concurrency, requests, per_stream,
                                        256))
    result.floor_cpu_us = (cpu_seconds(echo) - cpu) * 1e6 / streams


@contextmanager
def _scenario(name: str, upstream_port: int,
              workdir: Path) -> Iterator[tuple[int, Process | None, int | None]]:
    """Start what scenario `name` needs; yield the port clients should hit, the picker and,
    for the ext_proc scenarios, the admin port of the Envoy calling it."""
    with ExitStack() as stack:
        listen = free_port()
        if name == "sglang":
            stack.callback(start_sglang_router(
                listen, [f"http://127.0.0.1:{upstream_port}"], "round_robin", workdir).stop)
            yield listen, None, None
            return
        picker_port = None
        picker = None
        processes = 2 if name in ("buffered2", "authz2") else 1  # `serve --workers 2`
        authz_port = free_port_run(processes) if name.startswith("authz") else None
        if name == "authz-floor":
            assert authz_port is not None
            floor = start_envoy(_check_floor_config(authz_port, free_port(), upstream_port),
                                workdir, name="check-floor")
            stack.callback(floor.stop)
            front = render_authz_config(listen_port=listen, admin_port=free_port(),
                                        picker_port=free_port(), authz_port=authz_port)
            manager = front["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            del manager["typed_config"]["access_log"]  # nobody to release anything
            stack.callback(start_envoy(front, workdir, name=f"envoy-{name}").stop)
            yield listen, None, None
            return
        if name == "bare":
            picker_port = free_port()
            picker = spawn("bare-router", [sys.executable, "-m", "picker_bench.bare_router",
                                           str(picker_port), f"127.0.0.1:{upstream_port}"],
                           workdir)
            stack.callback(picker.stop)
            wait_listening([picker_port])
        elif name != "envoy":
            picker_port = free_port_run(processes)
            config = {"extproc": {"port": picker_port}, "admin": {"port": free_port()},
                      "policy": "round_robin", "health": {"enabled": False},
                      "workers": [{"url": f"http://127.0.0.1:{upstream_port}",
                                   "models": [MODEL]}]}
            if name == "explain":  # buffered, recording every decision; no header asked for
                config["explain"] = {"enabled": True, "allow_header": True}
            picker = start_picker(config, workdir, name=f"picker-{name}", authz_port=authz_port,
                                  processes=processes)
            stack.callback(picker.stop)
        if picker_port is not None and authz_port is not None:
            authz = render_authz_config(listen_port=listen, admin_port=free_port(),
                                        picker_port=picker_port, authz_port=authz_port,
                                        processes=processes)
            stack.callback(start_envoy(authz, workdir, name=f"envoy-{name}").stop)
            wait_listening([authz_port + i for i in range(processes)])
            yield listen, picker, None
            return
        body_mode = "FULL_DUPLEX_STREAMED" if name in ("duplex", "duplex2") else "BUFFERED"
        envoy_admin = free_port()
        envoy_config = render_envoy_config(
            listen_port=listen, admin_port=envoy_admin, picker_port=picker_port,
            upstream_port=upstream_port, body_mode=body_mode,
            replica_ports=[] if picker_port is None else
            range(picker_port + 1, picker_port + processes),
        )
        if name == "duplex2":
            duplex_both_ways(envoy_config)
        stack.callback(start_envoy(envoy_config, workdir, name=f"envoy-{name}").stop)
        if processes > 1:
            wait_picker_hosts(f"http://127.0.0.1:{envoy_admin}", processes)
        yield listen, picker, None if picker_port is None else envoy_admin


def _print_table(results: list[Result]) -> None:
    baseline = {r.concurrency: r for r in results if r.scenario == "envoy"}
    print(f"{'scenario':<12}{'conc':>5}{'p50 us':>9}{'p99 us':>9}{'req/s':>9}"
          f"{'errors':>7}{'p50 +us vs envoy':>18}{'rps vs envoy':>14}{'picker CPU us/req':>19}"
          f"{'msgs/req':>9}{'floor us/req':>13}{'CPU vs floor':>13}")
    for r in results:
        base = baseline.get(r.concurrency)
        extra = f"{r.p50_us - base.p50_us:+.0f}" if base else "-"
        ratio = f"{r.rps / base.rps:.2f}x" if base else "-"
        cpu = "-" if r.picker_cpu_us is None else f"{r.picker_cpu_us:.0f}"
        messages = "-" if r.messages is None else f"{r.messages:.2f}"
        floor = "-" if r.floor_cpu_us is None else f"{r.floor_cpu_us:.0f}"
        vs = ("-" if r.floor_cpu_us is None or r.picker_cpu_us is None
              else f"{r.picker_cpu_us / r.floor_cpu_us:.2f}x")
        print(f"{r.scenario:<12}{r.concurrency:>5}{r.p50_us:>9.0f}{r.p99_us:>9.0f}"
              f"{r.rps:>9.0f}{r.errors:>7}{extra:>18}{ratio:>14}{cpu:>19}"
              f"{messages:>9}{floor:>13}{vs:>13}")


def _idle_cpu_rate(proc: Process, window_secs: float = 3.0) -> float:
    """CPU seconds per second the process burns with no traffic."""
    before, started = cpu_seconds(proc), time.monotonic()
    time.sleep(window_secs)
    return (cpu_seconds(proc) - before) / (time.monotonic() - started)


def ext_proc_messages(admin_port: int) -> tuple[int, int]:
    """(messages Envoy sent to the picker, responses it received), from Envoy's own stats."""
    text = loopback().get(f"http://127.0.0.1:{admin_port}/stats?filter=ext_proc", timeout=5).text
    counts = {"stream_msgs_sent": 0, "stream_msgs_received": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        for key in counts:
            if name.endswith(f".{key}"):
                counts[key] += int(value)
    return counts["stream_msgs_sent"], counts["stream_msgs_received"]


@dataclass
class StreamResult:
    scenario: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_message: float | None = None
    messages: int = 0


STREAM_TOKENS = 200


def _stream_scenarios(requests: int, levels: list[int], workdir: Path) -> list[StreamResult]:
    """Envoy alone vs Envoy + picker (both bodies duplex) on 200-token streams, and the grpc.aio
    echo floor driven with as many messages as the picker answered."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell a story"}],
                       "max_tokens": STREAM_TOKENS, "stream": True}).encode()
    results: list[StreamResult] = []
    with ExitStack() as stack:
        sim = SimSpec("bench-sim", MODEL, ["--profile", "8b-h100-like", "--max-concurrency",
                                           "256"])
        stack.callback(start_sim(sim, workdir).stop)
        alone, alone_admin = free_port(), free_port()
        stack.callback(start_envoy(render_envoy_config(
            listen_port=alone, admin_port=alone_admin, picker_port=None,
            upstream_port=sim.port), workdir, "envoy-stream-alone").stop)
        picker_port, admin = free_port(), free_port()
        picker = start_picker({"extproc": {"port": picker_port}, "admin": {"port": free_port()},
                               "policy": "round_robin", "health": {"enabled": False},
                               "workers": [{"url": f"http://127.0.0.1:{sim.port}",
                                            "models": [MODEL]}]}, workdir, "picker-stream")
        stack.callback(picker.stop)
        config = render_envoy_config(listen_port=(front := free_port()), admin_port=admin,
                                     picker_port=picker_port, body_mode="FULL_DUPLEX_STREAMED")
        duplex_both_ways(config)
        stack.callback(start_envoy(config, workdir, "envoy-stream-picker").stop)
        echo_port = free_port()
        echo = spawn("grpc-echo", [sys.executable, "-m", "picker_bench.grpc_echo",
                                   str(echo_port)], workdir)
        stack.callback(echo.stop)
        for level in levels:
            for name, port in (("envoy", alone), ("picker", front)):
                asyncio.run(_load(port, level, level, body))  # warm connections
                idle_rate = _idle_cpu_rate(picker)
                cpu, (sent, answered) = cpu_seconds(picker), ext_proc_messages(admin)
                latencies, elapsed, errors = asyncio.run(_load(port, level, requests, body))
                cuts = statistics.quantiles(latencies, n=100)
                result = StreamResult(name, level, cuts[49] * 1e3, cuts[98] * 1e3, errors)
                if name == "picker":
                    sent2, answered2 = ext_proc_messages(admin)
                    result.messages = answered2 - answered
                    # The picker's background tasks (lease expiry, admin API) tick during a
                    # slow stream too: their idle rate is not per-message work.
                    work = cpu_seconds(picker) - cpu - idle_rate * elapsed
                    result.cpu_us_per_message = work * 1e6 / max(1, result.messages)
                    if sent2 - sent != result.messages:
                        print(f"  note: Envoy sent {sent2 - sent} messages, the picker "
                              f"answered {result.messages}", file=sys.stderr)
                results.append(result)
                print(f"  measured stream/{name} at concurrency {level}", file=sys.stderr)
            messages = results[-1].messages
            cpu = cpu_seconds(echo)
            echoed = asyncio.run(drive(echo_port, level, max(1, messages // level), 256))
            results.append(StreamResult("grpc-echo", level, 0.0, 0.0, 0,
                                        (cpu_seconds(echo) - cpu) * 1e6 / echoed, echoed))
    return results


def _print_stream_table(results: list[StreamResult]) -> None:
    print(f"\n{STREAM_TOKENS}-token streams (sim 8b-h100-like); CPU per ext_proc message")
    print(f"{'scenario':<11}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
          f"{'p50 vs envoy':>14}{'messages':>10}{'CPU us/msg':>12}{'vs floor':>10}")
    print("(picker CPU net of its idle rate; grpc-echo: the same message count on one "
          "grpc.aio stream per connection)")
    by_key = {(r.scenario, r.concurrency): r for r in results}
    for r in results:
        base = by_key.get(("envoy", r.concurrency))
        floor = by_key.get(("grpc-echo", r.concurrency))
        timed = r.scenario != "grpc-echo"
        ratio = f"{r.p50_ms / base.p50_ms:.3f}x" if timed and base else "-"
        cpu = f"{r.cpu_us_per_message:.0f}" if r.cpu_us_per_message is not None else "-"
        vs = (f"{r.cpu_us_per_message / floor.cpu_us_per_message:.2f}x"
              if r.scenario == "picker" and floor and floor.cpu_us_per_message
              and r.cpu_us_per_message is not None else "-")
        p50 = f"{r.p50_ms:.1f}" if timed else "-"
        p99 = f"{r.p99_ms:.1f}" if timed else "-"
        print(f"{r.scenario:<11}{r.concurrency:>5}{p50:>9}{p99:>9}{r.errors:>7}{ratio:>14}"
              f"{r.messages or '-':>10}{cpu:>12}{vs:>10}")


def run_overhead(requests: int = 2000, concurrency: list[int] | None = None,
                 peers: list[str] | None = None, long_context: int = 0,
                 picker_workers: int = 1) -> int:
    """`long_context` > 0: instead, that many long-prompt requests per size and level
    (picker_bench/longcontext.py), the picker running `serve --workers picker_workers`."""
    if long_context:
        workdir = Path(tempfile.mkdtemp(prefix="llm-picker-bench-"))
        long_results = run_long_context([225_280, 1_048_576], concurrency or [20, 60],
                                        long_context, workdir, picker_workers)
        print_long_context(long_results)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0 if all(r.errors == 0 for r in long_results) else 1
    levels = concurrency or [1, 16]
    scenarios = peers or ["envoy", "buffered", "authz", "duplex", "duplex2", "sglang", "stream"]
    if "sglang" in scenarios and importlib.util.find_spec("sglang_router") is None:
        print("sglang-router not installed (pip install sglang-router): skipping it")
        scenarios = [s for s in scenarios if s != "sglang"]
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-bench-"))
    results: list[Result] = []
    streams: list[StreamResult] = []
    lags: list[str] = []
    with ExitStack() as stack:
        upstream_port = free_port()
        upstream = start_envoy(_upstream_config(upstream_port, free_port()), workdir, "upstream")
        stack.callback(upstream.stop)
        echo_port = free_port()
        echo = spawn("grpc-echo-floor", [sys.executable, "-m", "picker_bench.grpc_echo",
                                         str(echo_port)], workdir)
        stack.callback(echo.stop)
        wait_listening([echo_port])
        for name in scenarios:
            if name == "stream":
                # A 200-token stream takes ~1.2 s: fewer requests give the same precision.
                streams = _stream_scenarios(max(8, requests // 20), levels, workdir)
                continue
            with _scenario(name, upstream_port, workdir) as (port, picker, envoy_admin):
                for level in levels:
                    results.append(_measure(name, port, level, requests, picker, envoy_admin))
                    print(f"  measured {name} at concurrency {level}", file=sys.stderr)
            for result in results:
                if result.scenario == name and result.messages is not None:
                    _measure_floor(result, echo, echo_port, requests)
            if name.startswith("authz") and picker is not None:
                # The picker logs, as it stops, how long after each request ended its slot
                # was released (Envoy's access-log flush and the stream's delivery).
                lags += [line.partition(" INFO ")[2] for line in picker.log_tail().splitlines()
                         if "release lag" in line]
    if results:
        _print_table(results)
    for line in lags:
        print(f"authz: {line}")
    if streams:
        _print_stream_table(streams)
    shutil.rmtree(workdir, ignore_errors=True)
    errors = sum(r.errors for r in results) + sum(r.errors for r in streams)
    return 0 if errors == 0 else 1

