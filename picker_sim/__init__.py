"""A simulated OpenAI-compatible inference engine for the demo, tests and benchmarks."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

from picker_sim.engine import PROFILES, SimConfig
from picker_sim.server import WORKER_HEADER, create_app, run_sim

__all__ = [
    "WORKER_HEADER",
    "SimConfig",
    "add_sim_arguments",
    "config_from_args",
    "create_app",
    "run_sim",
    "sim_runner",
]


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """The sim's flags, shared by `python -m picker_sim` and `llm-picker sim`.

    Tuning flags default to None so `config_from_args` can tell "not given" from a value and
    let a --profile fill the gaps.
    """
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, required=True)
    parser.add_argument("--model", default="sim-model")
    parser.add_argument("--worker-id", help="name in x-picker-sim-worker (default sim-<port>)")
    parser.add_argument("--ttft-ms", type=float, help="time to first token")
    parser.add_argument("--tpot-ms", type=float, help="time per output token")
    parser.add_argument("--max-tokens-default", type=int)
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--failure-rate", type=float, help="fraction answered 500")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--api-key", help="require Authorization: Bearer <key> on /v1/*")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="named latency/cache profile; explicit flags override it")
    parser.add_argument("--prefill-tokens-per-sec", type=float)
    parser.add_argument("--decode-ms-per-running", type=float)
    parser.add_argument("--max-batched-tokens", type=int,
                        help="per-step token budget shared by prefill chunks and decodes, as "
                             "vLLM's max_num_batched_tokens (0: prefills do not contend)")
    parser.add_argument("--block-tokens", type=int)
    parser.add_argument("--cache-blocks", type=int)
    parser.add_argument("--kv-events-port", type=_port,
                        help="publish KV-cache events (vLLM format, ZMQ PUB) on this port")
    parser.add_argument("--kv-replay-port", type=_port, help="ZMQ ROUTER port for replays")
    parser.add_argument("--role", choices=("regular", "prefill", "decode"),
                        help="prefill/decode disaggregation role (default regular)")
    parser.add_argument("--pd-protocol", choices=("sglang", "nixl", "sidecar"),
                        help="how a prefill/decode pair hands over the KV: SGLang bootstrap "
                             "rooms, vLLM NIXL kv_transfer_params, or (decode) an llm-d "
                             "sidecar running the NIXL prefill itself (default sglang)")
    parser.add_argument("--max-loras", type=int,
                        help="LoRA adapters in one batch, as vLLM's --max-loras (0: LoRA off)")
    parser.add_argument("--lora-modules", nargs="+", metavar="NAME[=PATH]",
                        help="adapters registered at start, as vLLM's --lora-modules")
    parser.add_argument("--lora-load-ms", type=float,
                        help="cost of copying an adapter into a GPU slot")
    parser.add_argument("--allow-runtime-lora-updating", action="store_true", default=None,
                        help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM: "
                             "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    parser.add_argument("--kv-encoding", choices=("map", "array"),
                        help="event encoding: map (vLLM 0.33, tagged events) or array (vLLM 0.11)")
    parser.add_argument("--grpc", action="store_true",
                        help="serve an engine's gRPC service (token ids in and out) instead of "
                             "HTTP: SGLang's scheduler, or vLLM's with --runtime vllm; needs the "
                             "grpc-engines extra")
    parser.add_argument("--runtime", choices=("sglang", "vllm"),
                        help="(--grpc) whose gRPC service: sglang (default) or vllm")
    parser.add_argument("--tokenizer", type=Path, metavar="DIR",
                        help="(--grpc) tokenizer directory: answer with ids of its vocabulary "
                             "and stream it on GetTokenizer (default: the toy ids)")
    parser.add_argument("--output-text", metavar="TEXT",
                        help="(--grpc --tokenizer) answer every request with this text, encoded "
                             "by the tokenizer, then stop (e.g. a tool call to parse)")
    parser.add_argument("--kv-events", action="store_true",
                        help="(--grpc) stream the cache's KV events on SubscribeKvEvents")
    parser.add_argument("--bootstrap-port", type=_port,
                        help="(--grpc --role prefill) where decode sims ask for prefilled rooms")


def _port(text: str) -> int:
    number = int(text)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {number}")
    return number


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """Profile values first, then every flag the user gave explicitly."""
    given = {
        "ttft_ms": ns.ttft_ms, "tpot_ms": ns.tpot_ms,
        "max_tokens_default": ns.max_tokens_default, "max_concurrency": ns.max_concurrency,
        "failure_rate": ns.failure_rate, "seed": ns.seed, "api_key": ns.api_key,
        "prefill_tokens_per_sec": ns.prefill_tokens_per_sec,
        "decode_ms_per_running": ns.decode_ms_per_running,
        "max_batched_tokens": ns.max_batched_tokens,
        "block_tokens": ns.block_tokens, "cache_blocks": ns.cache_blocks,
        "kv_events_port": ns.kv_events_port, "kv_replay_port": ns.kv_replay_port,
        "kv_encoding": ns.kv_encoding, "role": ns.role, "pd_protocol": ns.pd_protocol,
        "max_loras": ns.max_loras, "lora_load_ms": ns.lora_load_ms,
        "lora_modules": None if ns.lora_modules is None else tuple(ns.lora_modules),
        "runtime_lora_updating": ns.allow_runtime_lora_updating,
    }
    explicit = {k: v for k, v in given.items() if v is not None}
    identity = {"model": ns.model, "worker_id": ns.worker_id or f"sim-{ns.port}"}
    if ns.profile:
        return SimConfig.from_profile(ns.profile, **identity, **explicit)
    return SimConfig(**identity, **explicit)



def sim_runner(ns: argparse.Namespace) -> Callable[[], None]:
    """What serves the sim these flags describe, HTTP or gRPC, until interrupted. Every flag
    is checked here, before anything binds: a ValueError names the flag."""
    if (problem := _grpc_problem(ns)) is not None:
        raise ValueError(problem)
    config = config_from_args(ns)
    if not ns.grpc:
        return functools.partial(run_sim, config, ns.host, ns.port)
    try:
        from picker_sim.grpc_server import run_grpc_sim
        from picker_sim.token_vocab import SimVocabulary
    except ImportError as exc:
        raise ValueError(f"--grpc needs the grpc-engines extra (pip install "
                         f"'llm-picker[grpc-engines]'): {exc}") from exc
    vocabulary = (SimVocabulary.toy() if ns.tokenizer is None
                  else SimVocabulary.from_directory(ns.tokenizer, ns.output_text))
    return functools.partial(run_grpc_sim, config, vocabulary, ns.host, ns.port,
                             ns.bootstrap_port, ns.kv_events, ns.runtime or "sglang")


def _grpc_problem(ns: argparse.Namespace) -> str | None:
    """Why these flags make no gRPC sim (or no HTTP one), naming the flag; None when fine."""
    if not ns.grpc:
        for flag, value in (("--tokenizer", ns.tokenizer), ("--bootstrap-port", ns.bootstrap_port),
                            ("--output-text", ns.output_text),
                            ("--kv-events", ns.kv_events or None), ("--runtime", ns.runtime)):
            if value is not None:
                return f"{flag} is for a gRPC sim (--grpc)"
        return None
    for flag, value in (("--api-key", ns.api_key), ("--kv-events-port", ns.kv_events_port)):
        if value is not None:
            return f"{flag} is not served over gRPC: leave it out with --grpc"
    if ns.output_text is not None and ns.tokenizer is None:
        return "--output-text needs --tokenizer (the text is encoded by it)"
    if ns.runtime == "vllm" and ns.role not in (None, "regular"):
        return "--role: a vLLM gRPC sim is a regular worker (PD is simulated over SGLang's)"
    if ns.pd_protocol not in (None, "sglang"):
        return "--pd-protocol: a gRPC sim pairs as SGLang does (bootstrap rooms): sglang only"
    if (ns.role == "prefill") != (ns.bootstrap_port is not None):
        return "--bootstrap-port is needed by, and only by, a gRPC sim with --role prefill"
    return None
