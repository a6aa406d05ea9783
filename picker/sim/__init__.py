"""A simulated OpenAI-compatible inference engine for the demo, tests and benchmarks."""

from __future__ import annotations

import argparse

from picker.sim.engine import SimConfig
from picker.sim.server import WORKER_HEADER, create_app, run_sim

__all__ = [
    "WORKER_HEADER",
    "SimConfig",
    "add_sim_arguments",
    "config_from_args",
    "create_app",
    "run_sim",
]


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="sim-model")
    parser.add_argument("--worker-id", help="name in x-picker-sim-worker (default sim-<port>)")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="time to first token")
    parser.add_argument("--tpot-ms", type=float, default=2.0, help="time per output token")
    parser.add_argument("--max-tokens-default", type=int, default=16)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction answered 500")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--api-key", help="require Authorization: Bearer <key> on /v1/*")


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=ns.model, worker_id=ns.worker_id or f"sim-{ns.port}", ttft_ms=ns.ttft_ms,
        tpot_ms=ns.tpot_ms, max_tokens_default=ns.max_tokens_default,
        max_concurrency=ns.max_concurrency, failure_rate=ns.failure_rate, seed=ns.seed,
        api_key=ns.api_key,
    )
