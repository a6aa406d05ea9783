"""Picker memory under large request bodies through the real Envoy (issue 30): RSS grew from
96 MB to 237 MB over 40 requests of ~8 MB, still rising. Requests of 3-8 MB, two at a time,
in both body modes (full duplex also echoes the body back); the picker's RSS must level off
near what the bodies in flight need, and not keep climbing. (`llm-picker bench large-bodies`
runs the same load longer.)"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from picker_bench.large_bodies import BODY_MODES, MODEL, rss_mb, send_large_bodies
from picker_bench.stack import SimSpec, local_fleet

REQUESTS, CONCURRENCY = 45, 2


@pytest.mark.parametrize("body_mode", BODY_MODES)
def test_rss_levels_off_under_large_bodies(body_mode: str) -> None:
    with local_fleet([SimSpec("a", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"])],
                     body_mode=body_mode) as fleet:
        pid = fleet.processes["picker"].popen.pid
        idle = rss_mb(pid)
        samples = asyncio.run(send_large_bodies(fleet.envoy_url, pid, REQUESTS, CONCURRENCY))
    slope = statistics.linear_regression(range(len(samples)), samples).slope
    print(f"idle {idle:.0f} MB, after each request: {[round(s) for s in samples]}, "
          f"trend {slope:+.2f} MB/request")
    # Two bodies in flight, each held a few times over (gRPC message, joined body, decoded
    # prompt, echo): ~60 MB at most. Without the fixed mmap threshold the peak was 90 MB over.
    assert max(samples) - idle < 60, samples
    # Levelled off: no upward trend. A sample lands wherever the other body in flight happens to
    # be, so single samples swing by ~30 MB and a max per third does too (CI once saw the last
    # third's peak 8.2 MB over the middle's, with a trend of +0.07 MB a request); the fitted
    # slope sees through that. The leak of issue 30 was +3.5 MB a request. The first sample,
    # after one request, is at the level of the rest already (102-107 MB here, 106 in CI).
    assert slope < 0.5, (slope, samples)
