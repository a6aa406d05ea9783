"""Picker CPU per 200-token streamed chat, gRPC worker against HTTP worker, through Envoy.

`llm-picker bench grpc-route [--requests N]`: one HTTP sim and one gRPC sim (same
latency model, each serving a model of its own), the picker over self-signed TLS behind the
gateway configuration (both bodies FULL_DUPLEX_STREAMED, envoy/envoy-gateway.yaml), requests
sent one at a time in alternating blocks so both see the same machine. For an HTTP worker the
picker hands each response chunk back; for a gRPC worker it also tokenizes the prompt, decodes
each GenerateResponse, detokenizes and writes the SSE event. Picker CPU is read from /proc
around each block, and the ext_proc messages from Envoy's stats: a gRPC engine sends one
message per token, which Envoy passes on as one ext_proc message each, while an HTTP engine's
small chunks may coalesce.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from picker_bench.overhead import ext_proc_messages
from picker_bench.stack import ENVOY_GATEWAY, SimSpec, cpu_seconds, free_port, local_fleet
from picker_bench.tokenizer_dirs import build_tokenizer_dir

__all__ = ["run_grpc_route"]

_TOKENS = 200
_MESSAGES = [{"role": "system", "content": "be brief"},
             {"role": "user", "content": "tell me a long story about a quick brown fox"}]


def run_grpc_route(requests: int = 60, block: int = 10) -> int:
    """`requests` per worker kind, in alternating blocks of `block`."""
    with tempfile.TemporaryDirectory(prefix="llm-picker-grpc-bench-") as root:
        tokenizer = build_tokenizer_dir(Path(root) / "tok", "llama-3.1")
        port = free_port()
        timing = ["--ttft-ms", "2", "--tpot-ms", "0.5"]
        sims = [SimSpec("http", "http-model", timing),
                SimSpec("grpc", "grpc-model", ["--grpc", "--tokenizer", str(tokenizer),
                                               *timing], port=port,
                        worker={"url": f"grpc://127.0.0.1:{port}", "connection_mode": "grpc",
                                "runtime_type": "sglang", "tokenizer_path": str(tokenizer)})]
        with local_fleet(sims, body_mode="FULL_DUPLEX_STREAMED",
                         envoy_template=ENVOY_GATEWAY,
                         picker_settings={"extproc": {"tls": "self_signed"}}) as fleet:
            picker = fleet.processes["picker"]
            cpu = {"http-model": 0.0, "grpc-model": 0.0}
            wall = dict(cpu)
            messages = dict.fromkeys(cpu, 0)
            envoy_admin = int(fleet.envoy_admin_url.rsplit(":", 1)[1])
            with httpx.Client(base_url=fleet.envoy_url, timeout=60) as client:
                for model in cpu:  # warm-up: the tokenizer loads on the first gRPC request
                    _one(client, model)
                for _ in range(requests // block):
                    for model in cpu:
                        sent = ext_proc_messages(envoy_admin)[0]
                        before, started = cpu_seconds(picker), time.monotonic()
                        for _ in range(block):
                            _one(client, model)
                        cpu[model] += cpu_seconds(picker) - before
                        messages[model] += ext_proc_messages(envoy_admin)[0] - sent
                        wall[model] += time.monotonic() - started
    count = requests // block * block
    print(f"{'worker':8} {'requests':>8} {'picker CPU ms/req':>18} {'wall ms/req':>12} "
          f"{'ext_proc msgs/req':>18} {'CPU us/msg':>11}")
    for model, label in (("http-model", "http"), ("grpc-model", "grpc")):
        print(f"{label:8} {count:8d} {cpu[model] * 1e3 / count:18.2f} "
              f"{wall[model] * 1e3 / count:12.2f} {messages[model] / count:18.1f} "
              f"{cpu[model] * 1e6 / max(1, messages[model]):11.1f}")
    print(f"grpc/http picker CPU ratio: {cpu['grpc-model'] / cpu['http-model']:.2f}x")
    return 0


def _one(client: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": _MESSAGES, "max_tokens": _TOKENS, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        text = b"".join(response.iter_bytes())
    if not text.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{model}: the stream did not end with [DONE]: {text[-200:]!r}")
