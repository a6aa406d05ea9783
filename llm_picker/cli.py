"""`llm-picker serve | epp | envoy-config | check-config | sim | replay | trace | demo | bench`;
each subcommand imports only what it needs. Flags with no subcommand (`llm-picker --pool-name p
...`) are `epp`'s: the way the inferencepool Helm chart starts its endpoint picker image."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picker.errors import ConfigError

if TYPE_CHECKING:
    from picker.config import PickerConfig
    from picker.processes.group import ProcessGroup

__all__ = ["event_loop_factory", "main"]

log = logging.getLogger("llm_picker")


def _config_path(ns: argparse.Namespace) -> str | None:
    """--config, else LLM_PICKER_CONFIG (the variable the LiteLLM adapter reads too)."""
    from picker.config import CONFIG_ENV

    path: str | None = ns.config or os.environ.get(CONFIG_ENV) or None
    return path


def _serve(ns: argparse.Namespace) -> int:
    if ns.workers > 1:
        # A hangup (a config reload) must not kill the supervisor while it is starting.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from llm_picker.ports import check_ports
    from picker.config import load_config
    from picker.processes.group import ProcessGroup

    overrides = {
        "policy.name": ns.policy,
        "extproc.port": ns.extproc_port,
        "admin.port": ns.admin_port,
        "log.level": ns.log_level,
    }
    path = _config_path(ns)
    try:
        config = load_config(path, env=os.environ, overrides=overrides)
        group = ProcessGroup.from_env()
        if group is None:
            check_ports(config, ns.workers, _authz_port(ns))
    except ConfigError as exc:
        print(f"llm-picker: configuration error: {exc}", file=sys.stderr)
        return 2
    from llm_picker.logs import configure_logging

    configure_logging(config.log)
    config_file = Path(path) if path else None
    if group is None and ns.workers > 1:
        from llm_picker.supervisor import run_group

        try:
            return run_group(config, ns.workers, ns.argv, _authz_port(ns))
        except OSError as exc:
            print(f"llm-picker: {exc}", file=sys.stderr)
            return 1
    if group is not None:  # one of the supervisor's processes: its own ext_proc port
        health = config.extproc.health_port
        extproc = config.extproc.model_copy(update={
            "port": config.extproc.port + group.index,
            "health_port": None if health is None else health + group.index})
        config = config.model_copy(update={"extproc": extproc})
    return _run(config, config_file, overrides, group, _authz_port(ns))


def _epp(argv: list[str]) -> int:
    """GIE's endpoint picker flags (llm_picker/gie): ext_proc, as `serve` runs it."""
    from llm_picker.gie import epp_config, usage
    from llm_picker.logs import configure_logging
    from llm_picker.ports import check_ports

    if any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        return 0
    try:
        config, notes = epp_config(argv, os.environ)
        check_ports(config, 1, None)
    except ConfigError as exc:
        print(f"llm-picker epp: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log)
    for note in notes:
        log.warning("%s", note)
    return _run(config, None, None, None, None)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the picker serves on (`event_loop`): uvloop, when installed under
    `auto`, takes about a fifth off the picker's CPU per BUFFERED ext_proc request
    (grpc.aio's reads and writes are loop callbacks; docs/benchmarks.md, issue 27). None:
    asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop", "uvloop is not installed (pip install uvloop)"
                              ) from None
        return None
    return uvloop.new_event_loop


def _run(config: PickerConfig, config_file: Path | None, overrides: Mapping[str, Any] | None,
         group: ProcessGroup | None, authz_port: int | None) -> int:
    """Serve ext_proc, or ext_authz on `authz_port`, until stopped; the exit code."""
    from llm_picker.allocator import bound_large_allocations
    from llm_picker.tracing import export_traces

    bound_large_allocations()
    stop_tracing = None
    try:
        stop_tracing = export_traces(config)
        # The Envoy adapters live outside the core; only this command needs grpc.
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            if authz_port is not None:
                from llm_picker.serve_authz import serve_authz

                runner.run(serve_authz(config, authz_port, config_file, overrides, group))
            else:
                from llm_picker.serve_extproc import serve

                runner.run(serve(config, config_file, overrides, group))
    except ConfigError as exc:  # found while building (e.g. a tokenizer file that won't load)
        print(f"llm-picker: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llm-picker: {exc}", file=sys.stderr)
        return 1
    finally:
        if stop_tracing is not None:
            stop_tracing()  # exports the spans still batched
    return 0


def _authz_port(ns: argparse.Namespace) -> int | None:
    """--authz-port in --mode authz; None in ext_proc mode."""
    port: int = ns.authz_port
    return port if ns.mode == "authz" else None


def _envoy_config(ns: argparse.Namespace) -> int:
    from llm_picker.envoy_config import render_bootstrap
    from llm_picker.ports import check_ports
    from picker.config import load_config
    from picker.listen import TlsConfig

    try:
        config = load_config(_config_path(ns), env=os.environ)
        check_ports(config, ns.workers, _authz_port(ns))
        if ns.tls_dir is not None and not isinstance(config.extproc.tls, TlsConfig):
            raise ConfigError("--tls-dir", "only with extproc.tls given as files (Envoy then "
                              "presents its client certificate from there)")
        print(render_bootstrap(config, listen=ns.listen, admin=ns.admin, body_mode=ns.body_mode,
                               tls_dir=ns.tls_dir, processes=ns.workers,
                               authz_port=_authz_port(ns)),
              end="")
    except (ConfigError, ValueError) as exc:
        print(f"llm-picker: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_config(ns: argparse.Namespace) -> int:
    from llm_picker.check_config import check_files

    lines = check_files(ns.files, os.environ)
    for passed, line in lines:
        print(line, file=sys.stdout if passed else sys.stderr)
    return 0 if all(passed for passed, _ in lines) else 2


def _sim(ns: argparse.Namespace) -> int:
    from picker.listen import check_free
    from picker_sim import sim_runner

    try:
        run = sim_runner(ns)
        check_free(ns.host, ns.port, "the sim")
        if ns.bootstrap_port is not None:
            check_free(ns.host, ns.bootstrap_port, "the sim's bootstrap port")
    except (ValueError, OSError) as exc:
        print(f"llm-picker sim: {exc}", file=sys.stderr)
        return 2
    run()
    return 0


def _demo(ns: argparse.Namespace) -> int:
    from picker.config import load_config
    from picker_bench.demo import demo_settings, run_demo

    try:  # the policy is checked here, before three sims and Envoy start for nothing
        load_config(None, overrides={"policy.name": ns.policy, **demo_settings(ns.policy)})
    except ConfigError as exc:
        print(f"llm-picker: configuration error: {exc}", file=sys.stderr)
        return 2
    return run_demo(requests=ns.requests, policy=ns.policy, body_mode=ns.body_mode)


def _bench(ns: argparse.Namespace) -> int:
    if ns.bench == "soak":
        from picker_bench.soak import run_soak

        return run_soak(minutes=ns.minutes, users=ns.users, kill_every=ns.kill_every)
    if ns.bench == "lora":
        from picker_bench.lora import run_lora

        return run_lora(adapters=ns.adapters, engines=ns.engines, max_loras=ns.max_loras,
                        requests=ns.requests, concurrency=ns.concurrency, zipf_s=ns.zipf_s,
                        load_ms=ns.load_ms, max_tokens=ns.max_tokens, seed=ns.seed,
                        policies=ns.policies or None)
    if ns.bench == "flow":
        from picker_bench.flow import run_flow

        return run_flow(seconds=ns.seconds, seed=ns.seed, sheddable_share=ns.sheddable_share,
                        headroom_miss_rate=ns.headroom_miss_rate, warmup=ns.warmup,
                        preempt=ns.preempt)
    if ns.bench == "quota-drift":
        from picker_bench.quota_drift import run_quota_drift

        return run_quota_drift(replicas=ns.replicas, budget=ns.budget, seconds=ns.seconds)
    if ns.bench == "spread":
        from picker_bench.spread import run_spread

        return run_spread(requests=ns.requests, concurrency=ns.concurrency,
                          processes=ns.processes)
    if ns.bench == "large-bodies":
        from picker_bench.large_bodies import run_large_bodies

        return run_large_bodies(requests=ns.requests, concurrency=ns.concurrency)
    if ns.bench == "health-scale":
        from picker_bench.health_scale import run_health_scale

        return run_health_scale(workers=ns.workers, unreachable=ns.unreachable,
                                seconds=ns.seconds)
    if ns.bench == "kv-events":
        from picker_bench.kv_ingest import run_kv_events

        return run_kv_events(rates=ns.rates, seconds=ns.seconds)
    if ns.bench == "routing" and ns.pd:
        from picker_bench.pd import run_pd

        return run_pd(requests=ns.requests, rate=ns.rate, seed=ns.seed)
    if ns.bench == "lease-watch":
        from picker_bench.lease_watch import run_lease_watch

        return run_lease_watch(requests=ns.requests)
    if ns.bench == "chunk":
        from picker_bench.chunk import run_chunk

        return run_chunk(chunks=ns.chunks)
    if ns.bench == "tokenize":
        from picker_bench.tokenizing import run_tokenize

        return run_tokenize(family=ns.family, repeats=ns.repeats, profile=ns.profile)
    if ns.bench == "grpc-smg":
        from picker_bench.grpc_smg import run_grpc_smg

        return run_grpc_smg(sims=ns.sims, requests=ns.requests, levels=ns.concurrency,
                            rounds=ns.rounds, tokens=ns.max_tokens)
    if ns.bench == "grpc-route":
        from picker_bench.grpc_route import run_grpc_route

        return run_grpc_route(requests=ns.requests, block=ns.block)
    if ns.bench == "longprompt":
        from picker_bench.decision import run_long_prompt

        return run_long_prompt(sizes=ns.sizes, requests=ns.requests)
    if ns.bench == "routing":
        from picker_bench.routing import run_routing

        if ns.workload == "mooncake" and not ns.trace:
            print("llm-picker bench routing: --workload mooncake needs --trace FILE",
                  file=sys.stderr)
            return 2

        return run_routing(engines=ns.engines, groups=ns.groups, rate=ns.rate,
                           contenders=ns.contenders, seed=ns.seed, plot=ns.plot,
                           frontend=ns.frontend, cache_blocks=ns.cache_blocks,
                           fleet=ns.fleet, chars_per_token=ns.chars_per_token,
                           kv_tokenizer=ns.kv_tokenizer, replicas=ns.replicas,
                           share_picks=ns.share_picks,
                           trace=ns.trace if ns.workload == "mooncake" else None,
                           requests=ns.requests if ns.workload == "mooncake" else None)
    from picker_bench.overhead import run_overhead

    return run_overhead(requests=ns.requests, concurrency=ns.concurrency, peers=ns.peers,
                        long_context=ns.long_context, picker_workers=ns.picker_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-picker", description=__doc__)
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ext_proc server and the admin API")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument("--policy", help="routing policy (overrides policy.name)")
    serve.add_argument("--extproc-port", type=int, help="overrides extproc.port")
    serve.add_argument("--admin-port", type=int, help="overrides admin.port")
    serve.add_argument("--mode", choices=["extproc", "authz"], default="extproc",
                       help="extproc: Envoy's ext_proc filter (envoy/envoy.yaml, gateways); "
                            "authz: ext_authz + gRPC access log (envoy/envoy-authz.yaml)")
    serve.add_argument("--authz-port", type=int, default=9004,
                       help="with --mode authz: the HTTP check port (extproc.port then serves "
                            "the access-log stream)")
    serve.add_argument("--log-level", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log.level")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes acting as one picker, process i on extproc.port + i "
                            "(ext_proc mode; pair with `envoy-config --workers N`)")
    serve.set_defaults(run=_serve)
    # Parsed by main() before argparse (GIE's Go flag syntax): listed here for --help only.
    commands.add_parser("epp", add_help=False,
                        help="ext_proc started with the Gateway API Inference Extension's "
                             "endpoint picker flags (the inferencepool Helm chart's); "
                             "`epp --help` lists them")

    envoy = commands.add_parser(
        "envoy-config", help="print an Envoy bootstrap matching the picker configuration")
    envoy.add_argument("--config", help="the picker's YAML file (default: LLM_PICKER_CONFIG)")
    envoy.add_argument("--listen", default=":10000", help="[host]:port of Envoy's listener")
    envoy.add_argument("--admin", default=":9901", help="[host]:port of Envoy's admin")
    envoy.add_argument("--body-mode", choices=["BUFFERED", "FULL_DUPLEX_STREAMED"],
                       help="the ext_proc request_body_mode (see README, Body modes; default "
                            "BUFFERED, or FULL_DUPLEX_STREAMED with extproc.tls: self_signed, "
                            "as gateways configure it)")
    envoy.add_argument("--tls-dir",
                       help="with extproc.tls: where Envoy finds envoy-client.pem/.key, ca.pem "
                            "(default /etc/llm-picker/tls)")
    envoy.add_argument("--workers", type=_positive, default=1,
                       help="the picker runs `serve --workers N`: list its N ports")
    envoy.add_argument("--mode", choices=["extproc", "authz"], default="extproc",
                       help="the picker's `serve --mode` (authz: envoy/envoy-authz.yaml)")
    envoy.add_argument("--authz-port", type=int, default=9004,
                       help="with --mode authz: the picker's `--authz-port`")
    envoy.set_defaults(run=_envoy_config)

    check = commands.add_parser(
        "check-config", help="validate configuration files (or Kubernetes ConfigMaps holding "
                             "one) as serve would, without starting anything")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_check_config)

    sim = commands.add_parser("sim", help="run a simulated OpenAI-compatible engine")
    from picker_sim import add_sim_arguments

    add_sim_arguments(sim)
    sim.set_defaults(run=_sim)

    from picker_bench.replay.command import add_replay_parser, add_trace_parser

    add_replay_parser(commands)
    add_trace_parser(commands)

    demo = commands.add_parser("demo", help="Envoy + picker + 3 simulated engines, end to end")
    demo.add_argument("--requests", type=_positive, default=200)
    demo.add_argument("--policy", default="least_load")
    demo.add_argument(
        "--body-mode", default="BUFFERED", choices=["BUFFERED", "FULL_DUPLEX_STREAMED"]
    )
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="benchmarks (print numbers, assert nothing)")
    which = bench.add_subparsers(dest="bench", required=True)
    overhead = which.add_parser("overhead", help="latency added by the picker behind Envoy")
    overhead.add_argument("--requests", type=int, default=2000, help="per scenario")
    overhead.add_argument("--concurrency", type=int, nargs="+", help="default 1 16 (20 60 with"
                          " --long-context)")
    overhead.add_argument("--long-context", type=int, default=0, metavar="REQUESTS",
                          help="instead: 220 KB and 1 MB streaming prompts on 4 instant sims, "
                               "Envoy + picker (prefix_cache) vs sglang-router cache_aware, "
                               "REQUESTS per size and concurrency")
    overhead.add_argument("--picker-workers", type=_positive, default=1,
                          help="with --long-context: the picker runs `serve --workers N`")
    overhead.add_argument(
        "--peers", nargs="+",
        default=["envoy", "buffered", "authz", "duplex", "duplex2", "sglang", "stream"],
        help="scenarios to run (also: bare - buffered's Envoy with a bare Python router, "
             "picker_bench.bare_router; explain - buffered with explain.enabled; buffered2, "
             "authz2 - buffered, authz with `serve --workers 2`; authz-floor - authz's Envoy "
             "with checks answered by an Envoy)",
    )
    overhead.set_defaults(run=_bench)
    routing = which.add_parser("routing", help="routing quality on a shared-prefix workload")
    routing.add_argument("--engines", type=int, default=8)
    routing.add_argument("--groups", type=int, default=64, help="distinct system prompts")
    routing.add_argument("--rate", type=float, default=40.0, help="arrivals per second")
    routing.add_argument("--seed", type=int, default=0)
    routing.add_argument("--frontend", choices=["envoy", "litellm"], default="envoy",
                         help="envoy: picker policies through Envoy vs sglang-router; litellm: "
                              "LiteLLM's strategies vs the picker strategy inside LiteLLM")
    routing.add_argument("--contenders", nargs="+",
                         help="policy names or sglang (default: all of the frontend's); a "
                              "policy takes options in any order: +kv_events (index from the "
                              "engines' KV events), +gateway (Envoy with both bodies "
                              "FULL_DUPLEX_STREAMED, as gateways configure it), +slo<ms> "
                              "(every request carries x-slo-ttft-ms)")
    routing.add_argument("--plot", help="write an SVG chart of the results to this path")
    routing.add_argument("--cache-blocks", type=int,
                         help="KV-cache blocks per engine (default: the profile's); small "
                              "values make engines evict often")
    routing.add_argument("--kv-tokenizer", choices=["hf", "remote"], default="hf",
                         help="tokenizer of the +kv_events contenders: an in-process hf file "
                              "equal to the sims' tokenizer, or a sim's /tokenize")
    routing.add_argument("--pd", action="store_true",
                         help="prefill/decode layouts (4 regular, 1P+3D, 2P+2D) on prefill- "
                              "and decode-heavy workloads instead (uses --rate, --requests)")
    routing.add_argument("--requests", type=int, default=200,
                         help="per run, with --pd; trace records read, with --workload mooncake")
    routing.add_argument("--workload", choices=["synthetic", "mooncake"], default="synthetic",
                         help="mooncake: replay a Mooncake FAST'25 trace (--trace) scaled to "
                              "the simulator")
    routing.add_argument("--trace", help="the trace file (JSONL) for --workload mooncake; "
                                         "picker_bench/data/mooncake_synthetic.jsonl is a "
                                         "made-up sample in its format")
    routing.add_argument("--fleet", choices=["homogeneous", "hetero"], default="homogeneous",
                         help="hetero: half the engines at half speed, session-heavy traffic")
    routing.add_argument("--chars-per-token", type=int, default=6,
                         help="characters per engine token of the workload's prompts")
    routing.add_argument("--replicas", type=int, default=1,
                         help="picker replicas behind the one Envoy (round-robined streams)")
    routing.add_argument("--share-picks", action=argparse.BooleanOptionalAction, default=True,
                         help="replicas share their approximate-index picks (replicas:)")
    routing.set_defaults(run=_bench)
    soak = which.add_parser("soak", help="long load with engines and the picker killed")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--users", type=int, default=8)
    soak.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    soak.set_defaults(run=_bench)
    chunk = which.add_parser("chunk", help="in-process cost of one echoed response chunk")
    chunk.add_argument("--chunks", type=int, default=100_000)
    chunk.set_defaults(run=_bench)
    watch = which.add_parser("lease-watch", help="in-process cost of the prediction audit and "
                                                  "trace recording per request")
    watch.add_argument("--requests", type=int, default=20_000)
    watch.set_defaults(run=_bench)
    long = which.add_parser("longprompt", help="in-process cost of long prompts: parse + route")
    long.add_argument("--sizes", type=int, nargs="+", default=[225_280, 1_048_576],
                      help="prompt characters")
    long.add_argument("--requests", type=int, default=100, help="per size and body shape")
    long.set_defaults(run=_bench)
    tokenize = which.add_parser("tokenize", help="engine-exact chat tokenization (template + "
                                "encode) of 1k/8k/32k-token chats vs transformers and vs the "
                                "picker's decision")
    tokenize.add_argument("--family", default="qwen2.5",
                          choices=["llama-3.1", "qwen2.5", "mistral-nemo", "deepseek-r1"],
                          help="the published chat template and special tokens to use")
    tokenize.add_argument("--repeats", type=int, default=20, help="timed runs per size")
    tokenize.add_argument("--profile", action="store_true",
                          help="cProfile's top functions for a never-seen and a next-turn 8k chat")
    tokenize.set_defaults(run=_bench)
    lora = which.add_parser("lora", help="many LoRA adapters, Zipf popularity: TTFT and "
                            "adapter loads per policy, LoRA affinity against least_load and "
                            "round_robin")
    lora.add_argument("--adapters", type=int, default=40)
    lora.add_argument("--engines", type=int, default=4)
    lora.add_argument("--max-loras", type=int, default=4)
    lora.add_argument("--requests", type=int, default=1200)
    lora.add_argument("--concurrency", type=int, default=32)
    lora.add_argument("--zipf-s", type=float, default=1.0)
    lora.add_argument("--load-ms", type=float, default=50.0,
                      help="cost of copying an adapter into a GPU slot")
    lora.add_argument("--max-tokens", type=int, default=16)
    lora.add_argument("--seed", type=int, default=7)
    lora.add_argument("--policies", nargs="+",
                      help="default: lora_affinity, weighted (lora + in_flight), least_load, "
                           "round_robin")
    lora.set_defaults(run=_bench)
    flow = which.add_parser("flow", help="a fleet offered 2x its capacity in two priority "
                            "bands: flow control against the single admission queue")
    flow.add_argument("--seconds", type=float, default=15.0, help="per phase")
    flow.add_argument("--seed", type=int, default=1)
    flow.add_argument("--sheddable-share", type=float, default=1.0,
                      help="flow.saturation.sheddable_share: the slots the batch band may fill")
    flow.add_argument("--headroom-miss-rate", type=float, default=0.01,
                      help="flow.saturation.headroom_miss_rate (0: no adaptive headroom)")
    flow.add_argument("--warmup", type=float, default=0.0,
                      help="seconds the interactive band runs alone, unmeasured, before "
                           "the measured phase (steady state instead of a cold start)")
    flow.add_argument("--preempt", action="store_true",
                      help="flow.preempt: interactive requests end running batch ones")
    flow.set_defaults(run=_bench)
    drift = which.add_parser("quota-drift", help="one flow offered 3x its requests/min "
                             "budget through replicas that each enforce it")
    drift.add_argument("--replicas", type=int, default=2)
    drift.add_argument("--budget", type=int, default=30, help="requests per minute")
    drift.add_argument("--seconds", type=float, default=30.0, help="per phase, at most 60")
    drift.set_defaults(run=_bench)
    spread = which.add_parser("spread", help="a least_load burst over 4 engines with "
                              "`serve --workers N`, per process count")
    spread.add_argument("--requests", type=int, default=2000)
    spread.add_argument("--concurrency", type=int, default=32)
    spread.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    spread.set_defaults(run=_bench)
    kv = which.add_parser("kv-events", help="KV-event ingestion rate and routing latency under it")
    kv.add_argument("--rates", type=int, nargs="+", default=[10_000, 20_000],
                    help="BlockStored events per second to publish while measuring")
    kv.add_argument("--seconds", type=float, default=10.0, help="per phase")
    kv.set_defaults(run=_bench)
    scale = which.add_parser("health-scale", help="health checks with thousands of workers "
                             "registered through the admin API, a share unreachable")
    scale.add_argument("--workers", type=int, default=2000)
    scale.add_argument("--unreachable", type=float, default=0.5, help="share of the workers")
    scale.add_argument("--seconds", type=float, default=30.0, help="per phase")
    scale.set_defaults(run=_bench)
    large = which.add_parser("large-bodies", help="picker memory under 3-8 MB request bodies "
                             "through Envoy, per body mode")
    large.add_argument("--requests", type=int, default=120)
    large.add_argument("--concurrency", type=int, default=2)
    large.set_defaults(run=_bench)
    smg = which.add_parser("grpc-smg", help="Envoy + picker against the SMG gateway on the "
                           "same gRPC sim fleet: req/s, TTFT p50/p99 and gateway CPU")
    smg.add_argument("--sims", type=int, default=2)
    smg.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    smg.add_argument("--requests", type=int, nargs="+", default=[40, 160],
                     help="per phase, one per --concurrency")
    smg.add_argument("--rounds", type=int, default=3, help="alternations of the two gateways")
    smg.add_argument("--max-tokens", type=int, default=64)
    smg.set_defaults(run=_bench)
    route = which.add_parser("grpc-route", help="picker CPU per 200-token streamed chat, gRPC "
                             "worker against HTTP worker, through Envoy")
    route.add_argument("--requests", type=int, default=60, help="per worker kind")
    route.add_argument("--block", type=int, default=10, help="requests per alternating block")
    route.set_defaults(run=_bench)
    return parser


class _VersionAction(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for, because
    importlib.metadata costs every start (a simulated engine's among them) ~50 ms of CPU."""

    def __init__(self, option_strings: list[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"llm-picker {_version()}")  # on stdout, as argparse's own "version" action
        parser.exit()


def _version() -> str:
    """The installed package's version; a source tree run without installing has none."""
    import importlib.metadata

    try:
        return importlib.metadata.version("llm-picker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["epp"]:
        return _epp(argv[1:])
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        return _epp(argv)  # the inferencepool chart passes GIE's flags with no subcommand
    ns = build_parser().parse_args(argv)
    ns.argv = argv  # `serve --workers N` starts N copies of this very command
    code: int = ns.run(ns)
    return code
