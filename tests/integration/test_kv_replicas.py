"""Two `llm-picker serve` replicas following the same engines' KV events agree on where a
prefix lives, though only one of them routed the traffic; an approximate-index replica, which
learns from its own picks only, has no idea."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb
from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, free_port, local_fleet, start_picker
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER
from tests.unit.test_extproc_stream import body_msg, headers_msg, set_headers

SYSTEM = "shared instructions " + " ".join(f"s{j}" for j in range(400))


def chat(question: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


def decide(extproc_port: int, body: dict[str, Any]) -> str:
    """Ask a picker over ext_proc where this request would go; the request goes nowhere."""
    with grpc.insecure_channel(f"127.0.0.1:{extproc_port}") as channel:
        call = channel.stream_stream(PROCESS_METHOD,
                                     request_serializer=pb.ProcessingRequest.SerializeToString,
                                     response_deserializer=pb.ProcessingResponse.FromString)
        replies = call(iter([headers_msg(), body_msg(json.dumps(body).encode(), True)]),
                       timeout=5)
        first = next(replies)
        return set_headers(first.request_headers.response.header_mutation)[
            "x-gateway-destination-endpoint"]


def match_buckets(admin_port: int) -> dict[str, float]:
    text = loopback().get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llm_picker_routing_decisions_total{"):
            bucket = line.split('match_percent_bucket="')[1].split('"')[0]
            buckets[bucket] = buckets.get(bucket, 0) + float(line.rsplit(" ", 1)[1])
    return buckets


def test_replicas_following_kv_events_agree_after_traffic_only_one_routed() -> None:
    kv_ports = [(free_port(), free_port()) for _ in range(3)]
    sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1", "--kv-events-port",
                                     str(events), "--kv-replay-port", str(replay)],
                    port=free_port())
            for i, (events, replay) in enumerate(kv_ports)]
    workers = [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": [MODEL],
                "kv_block_size": 16,
                "kv_events": {"endpoint": f"tcp://127.0.0.1:{events}",
                              "replay_endpoint": f"tcp://127.0.0.1:{replay}"}}
               for s, (events, replay) in zip(sims, kv_ports, strict=True)]
    prefix = {"enabled": True, "index": "kv_events",
              "tokenizer": {"kind": "remote", "endpoint": f"http://127.0.0.1:{sims[0].port}"}}
    settings = {**FAST_HEALTH, "prefix": prefix, "workers": workers}
    with local_fleet(sims, policy="prefix_cache", picker_settings=settings) as fleet:
        replica = {"extproc": {"port": free_port()}, "admin": {"port": free_port()},
                   "policy": "prefix_cache", "prefix": prefix, "workers": workers}
        approx = {**replica, "extproc": {"port": free_port()}, "admin": {"port": free_port()},
                  "prefix": {"enabled": True}}
        started = [start_picker(replica, fleet.workdir, name="replica"),
                   start_picker(approx, fleet.workdir, name="approx")]
        try:
            homes = set()
            for i in range(4):  # only the Envoy-fronted picker sees this traffic
                response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions",
                                           json=chat(f"question {i}"), timeout=10)
                assert response.status_code == 200, response.text
                homes.add(response.headers[SIM_HEADER])
            assert len(homes) == 1, homes
            home = fleet.sims[homes.pop()].port
            time.sleep(2.5)  # past prefix.kv_events.pending_secs: events alone now count
            fresh = chat("a question nobody asked yet")
            assert decide(replica["extproc"]["port"], fresh) == f"127.0.0.1:{home}"
            # It chose the home engine because it knows it holds the prompt (all but the tail).
            assert match_buckets(replica["admin"]["port"]) in ({"76-99": 1.0}, {"100": 1.0})
            decide(approx["extproc"]["port"], fresh)
            assert match_buckets(approx["admin"]["port"]) == {"0": 1.0}  # it knows nothing
        finally:
            for proc in started:
                proc.stop()
