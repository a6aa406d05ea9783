"""Explained decisions end to end: Envoy's explain response header, and the status page in a
real headless Chromium against a running picker with simulated engines.

Set UPDATE_SCREENSHOT=1 to refresh docs/status-page.png (the README's picture) from this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from picker.config import load_config
from picker.runtime import PickerRuntime
from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, free_port, local_fleet
from tests.browser import Chromium, find_chromium
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER

EXPLAIN = "x-llm-picker-explain"
SCREENSHOT = Path(__file__).parents[2] / "docs" / "status-page.png"
SYSTEMS = [f"You are assistant number {i}. " + "Follow the house rules carefully. " * 30
           for i in range(4)]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    sims = [SimSpec(f"sim-{n}", MODEL, ["--ttft-ms", "5", "--tpot-ms", "2"]) for n in "abc"]
    settings = {**FAST_HEALTH, "prefix": {"enabled": True},
                "explain": {"enabled": True, "allow_header": True}}
    with local_fleet(sims, policy="prefix_cache", picker_settings=settings) as running:
        yield running


def chat(fleet: Fleet, system: str, question: str,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return loopback().post(f"{fleet.envoy_url}/v1/chat/completions", headers=headers or {},
                           timeout=10.0, json={"model": MODEL, "max_tokens": 2, "messages": [
                          {"role": "system", "content": system},
                          {"role": "user", "content": question}]})


def test_explain_header_only_when_asked(fleet: Fleet) -> None:
    system = SYSTEMS[0] + "explain test"
    chat(fleet, system, "warm the cache").raise_for_status()
    asked = chat(fleet, system, "the secret is hunter2", {EXPLAIN: "1"})
    asked.raise_for_status()
    line = asked.headers[EXPLAIN]
    worker = asked.headers[SIM_HEADER]
    assert line == f"policy=prefix_cache; worker={worker}; match=1.00; reason=best-prefix"
    assert "hunter2" not in line and "house rules" not in line
    plain = chat(fleet, system, "no explanation please")
    assert plain.status_code == 200 and EXPLAIN not in plain.headers
    # Envoy returns the request id it made, so a caller can look its decision up.
    found = loopback().get(f"{fleet.admin_url}/debug/decisions/{plain.headers['x-request-id']}")
    assert found.status_code == 200 and found.json()["worker"] == plain.headers[SIM_HEADER]
    record = loopback().get(f"{fleet.admin_url}/debug/decisions",
                            params={"limit": 1, "worker": worker}).json()["decisions"][0]
    assert record["worker"] == worker and record["reason"] == "best-prefix"
    assert "hunter2" not in str(record) and "house rules" not in str(record)


def _traffic(fleet: Fleet, stop: threading.Event) -> None:
    """Shared-prefix chats until `stop` (bounded: at most 10 minutes)."""
    deadline = time.monotonic() + 600
    i = 0
    while not stop.is_set() and time.monotonic() < deadline:
        # While a worker is killed some chats fail: the test is about what the page shows.
        with contextlib.suppress(httpx.HTTPError):
            chat(fleet, SYSTEMS[i % len(SYSTEMS)], f"question {i}")
        i += 1
        time.sleep(0.02)


async def test_status_page_renders_workers_and_follows_a_kill(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("NO BROWSER: Debian's chromium is not installed, so the status page is "
                    "NOT tested in a browser (.ci/run installs it: apt-get install -y chromium)")
    stop = threading.Event()
    sender = threading.Thread(target=_traffic, args=(fleet, stop), daemon=True)
    sender.start()
    try:
        async with Chromium(chromium, width=1400) as browser:
            await browser.open(f"{fleet.admin_url}/")
            # Drawn with the page, before the first poll (POLL_MS after load): a screenshot
            # right after load shows workers, not "loading..." and empty tables.
            await browser.wait_for("document.readyState === 'complete'")
            rows = await browser.evaluate(
                "[...document.querySelectorAll('#workers tbody tr')]"
                ".map(r => r.dataset.worker + ':' + r.dataset.state).join(',')")
            assert rows == "sim-a:healthy,sim-b:healthy,sim-c:healthy"
            assert "policy prefix_cache" in await browser.evaluate(
                "document.getElementById('summary').textContent")
            await browser.wait_for("document.querySelectorAll('#decisions tbody tr').length > 5")
            reason = await browser.evaluate(
                "document.querySelector('#decisions tbody tr td:nth-child(7)').textContent")
            assert reason in {"best-prefix", "least-load", "load-over-prefix", "policy"}
            assert await browser.evaluate(
                "document.querySelector('[data-policy=prefix_cache]') !== null")
            # Two history samples (5 s apart) make the first plotted interval.
            await browser.wait_for(
                "document.querySelectorAll('#workers svg.rate :is(polyline, circle)').length >= 3",
                timeout=20)
            await browser.screenshot(tmp_path / "before.png")

            fleet.processes["sim-sim-b"].kill()
            state = await browser.wait_for(
                "document.querySelector('#workers tr[data-worker=\"sim-b\"]')"
                "?.dataset.state !== 'healthy' && "
                "document.querySelector('#workers tr[data-worker=\"sim-b\"]').dataset.state")
            assert state in {"unhealthy", "circuit_open"}
            summary = await browser.evaluate("document.getElementById('summary').textContent")
            assert "2/3 workers healthy" in summary
            # Decisions after the kill list sim-b as excluded, and why.
            await browser.wait_for(
                "document.querySelector('#decisions tbody tr td:nth-child(8)')"
                "?.textContent.includes('sim-b: ')")
            # A dead worker serves nothing: no hit rate, rather than its last one.
            await browser.wait_for(
                "document.querySelector('#workers tr[data-worker=\"sim-b\"] td:nth-child(9)')"
                ".textContent.trim() === '–'", timeout=20)
            assert await browser.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth")
            await asyncio.sleep(1.0)
            shot = tmp_path / "status-page.png"
            await browser.screenshot(shot)
            assert shot.stat().st_size > 10_000
            if os.environ.get("UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(shot, SCREENSHOT)
    finally:
        stop.set()
        sender.join(15)


async def test_status_page_with_a_read_token_in_a_browser(tmp_path: Path) -> None:
    """`/?token=` once: the cookie it sets carries the page's own polls of /debug/status."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("NO BROWSER: Debian's chromium is not installed (apt-get install -y chromium)")
    port = free_port()
    config = load_config(overrides={"admin": {"port": port, "token": "write-token-x1",
                                              "read_token": "read-token-y2"},
                                    "workers": [{"url": "127.0.0.1:1", "id": "w0",
                                                 "models": [MODEL]}]})
    runtime = PickerRuntime(config)
    runtime.start_in_thread()
    try:
        async with Chromium(chromium) as browser:
            await browser.open(f"http://127.0.0.1:{port}/")
            refused = await browser.wait_for("document.body?.innerText.includes('?token=') "
                                             "&& document.body.innerText")
            assert "unauthorized" in refused  # no cookie yet: the error says how to get one
            await browser.open(f"http://127.0.0.1:{port}/?token=read-token-y2")
            rows = await browser.wait_for(
                "[...document.querySelectorAll('#workers tbody tr')]"
                ".map(r => r.dataset.worker).join(',')")
            assert rows == "w0"
            assert await browser.evaluate("location.search") == ""  # token left the address
    finally:
        runtime.stop_thread()
