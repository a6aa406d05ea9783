"""Flow control through the real Envoy and simulated engines (issue 26): priority bands,
fairness between flows, TTL, client hang-ups, trusted headers, quotas, scale from zero.

One engine with room for one request at a time (flow.saturation.max_in_flight_per_worker: 1):
a long "blocker" request holds it while the requests under test queue behind it in the
picker; their completion order is their dispatch order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import (
    ENVOY_GATEWAY,
    ENVOY_TEMPLATE,
    Fleet,
    SimSpec,
    free_port,
    local_fleet,
    start_sims,
)
from tests.browser import Chromium, find_chromium
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER, metric_values, wait_until

SIM = ["--ttft-ms", "30", "--tpot-ms", "5"]
FLOW = {"enabled": True, "trust_client_headers": True,
        "objectives": {"interactive": 10, "batch": -1}, "ttl_secs": 1.5, "max_queued": 20,
        "saturation": {"max_in_flight_per_worker": 1},
        "quotas": {"greedy": {"tokens_per_minute": 50}}}


@contextlib.contextmanager
def flow_fleet(*, gateway: bool = False, **flow: object) -> Iterator[Fleet]:
    """`gateway`: Envoy as a Gateway configures the filter (both bodies FULL_DUPLEX_STREAMED,
    TLS to the picker) instead of the repository's envoy/envoy.yaml (request body BUFFERED)."""
    settings = {**FAST_HEALTH, "flow": {**FLOW, **flow}, "explain": {"enabled": True},
                **({"extproc": {"tls": "self_signed"}} if gateway else {})}
    with local_fleet([SimSpec("a", MODEL, SIM)], picker_settings=settings,
                     body_mode="FULL_DUPLEX_STREAMED" if gateway else "BUFFERED",
                     envoy_template=ENVOY_GATEWAY if gateway else ENVOY_TEMPLATE) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with flow_fleet() as running:
        yield running


def headers(flow: str, objective: str | None = None) -> dict[str, str]:
    out = {"x-gateway-inference-fairness-id": flow}
    if objective is not None:
        out["x-gateway-inference-objective"] = objective
    return out


async def send(client: httpx.AsyncClient, sent: Mapping[str, str], max_tokens: int = 1,
               content: str = "hi") -> tuple[httpx.Response, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens}
    response = await client.post("/v1/chat/completions", json=body, headers=dict(sent))
    return response, time.monotonic()


def queued(fleet: Fleet) -> float:
    return sum(metric_values(fleet, "llm_picker_flow_queued").values())


async def queue_up(fleet: Fleet, client: httpx.AsyncClient,
                   groups: list[list[dict[str, str]]], blocker_tokens: int = 150,
                   ) -> list[list[tuple[httpx.Response, float]]]:
    """Hold the engine with a blocker, then queue each group in turn (each waits until the
    previous is queued); returns every group's (response, completion time)."""
    blocker = asyncio.create_task(send(client, headers("blocker"), blocker_tokens))
    await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5, "the blocker")
    tasks: list[list[asyncio.Task[tuple[httpx.Response, float]]]] = []
    expected = 0
    for group in groups:
        tasks.append([asyncio.create_task(send(client, sent)) for sent in group])
        expected += len(group)
        await asyncio.to_thread(wait_until, lambda n=expected: queued(fleet) == n, 5,
                                f"{expected} queued")
    assert (await blocker)[0].status_code == 200
    return [list(await asyncio.gather(*group)) for group in tasks]


def in_flight(fleet: Fleet) -> float:
    return sum(metric_values(fleet, "llm_picker_worker_in_flight").values())


def test_a_higher_band_is_served_before_a_lower_one_queued_earlier(fleet: Fleet) -> None:
    async def scenario() -> list[list[tuple[httpx.Response, float]]]:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
            return await queue_up(fleet, client, [[headers("b", "batch")] * 3,
                                                  [headers("i", "interactive")] * 3])

    batch, interactive = asyncio.run(scenario())
    assert all(r.status_code == 200 for r, _ in batch + interactive)
    assert max(t for _, t in interactive) < min(t for _, t in batch)


def test_two_backlogged_flows_of_a_band_take_turns(fleet: Fleet) -> None:
    async def scenario() -> list[list[tuple[httpx.Response, float]]]:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
            return await queue_up(fleet, client, [[headers("big")] * 6, [headers("small")] * 3])

    big, small = asyncio.run(scenario())
    assert all(r.status_code == 200 for r, _ in big + small)
    # In completion order, the first six alternate: three of each (FIFO: six of big first).
    order = sorted([(t, "big") for _, t in big] + [(t, "small") for _, t in small])
    assert [flow for _, flow in order[:6]].count("small") == 3


def test_waiting_past_the_ttl_is_503_with_retry_after(fleet: Fleet) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
            # The blocker generates for about 3 s; the TTL is 1.5 s.
            blocker = asyncio.create_task(send(client, headers("blocker"), 600))
            await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5, "blocker")
            started = time.monotonic()
            waiter, _ = await send(client, headers("late"))
            assert 1.4 < time.monotonic() - started < 2.5
            return waiter, (await blocker)[0]

    expired, blocker = asyncio.run(scenario())
    assert blocker.status_code == 200
    assert expired.status_code == 503
    assert expired.headers["retry-after"] == "1"
    assert expired.json()["error"]["code"] == "ttl_expired"
    expired_count = metric_values(fleet, "llm_picker_flow_requests_total")
    assert expired_count[(("flow", "late"), ("outcome", "ttl_expired"), ("priority", "0"))] >= 1
    records = loopback().get(f"{fleet.admin_url}/debug/decisions").json()["decisions"]
    refusal = next(r for r in records if r["flow"] and r["flow"]["flow"] == "late")
    assert (refusal["policy"], refusal["worker"], refusal["reason"]) == \
        ("flow_control", None, "ttl_expired")
    assert refusal["flow"]["waited_secs"] >= 1.4


def test_the_status_page_shows_the_queues_and_records_say_how_long_a_request_waited(
        fleet: Fleet) -> None:
    async def scenario() -> tuple[list[dict[str, object]], httpx.Response]:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
            blocker = asyncio.create_task(send(client, headers("blocker"), 100))
            await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5, "blocker")
            waiting = asyncio.create_task(send(client, headers("patient", "interactive")))
            await asyncio.to_thread(wait_until, lambda: queued(fleet) == 1, 5, "queued")
            async with httpx.AsyncClient(base_url=fleet.admin_url) as admin:
                status = (await admin.get("/debug/status")).json()
            await blocker
            return status["flow"]["flows"], (await waiting)[0]

    shown, served = asyncio.run(scenario())
    waiting = [row for row in shown if row["queued"]]
    assert [(row["priority"], row["flow"], row["queued"]) for row in waiting] == \
        [(10, "patient", 1)]
    assert 0 < waiting[0]["oldest_wait_secs"] < 5
    assert served.status_code == 200
    records = loopback().get(f"{fleet.admin_url}/debug/decisions").json()["decisions"]
    record = next(r for r in records if r["flow"] and r["flow"]["flow"] == "patient")
    assert record["worker"] == "a" and record["flow"]["priority"] == 10
    assert record["flow"]["waited_secs"] > 0.1


def test_a_client_hanging_up_while_queued_frees_its_place() -> None:
    with flow_fleet(max_queued=1) as fleet:
        async def scenario() -> tuple[int, int]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
                blocker = asyncio.create_task(send(client, headers("blocker"), 200))
                await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5, "blocker")
                async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=0.3) as impatient:
                    with pytest.raises(httpx.ReadTimeout):
                        await send(impatient, headers("gone"))
                await asyncio.to_thread(wait_until, lambda: queued(fleet) == 0, 5,
                                        "the queue to forget the hang-up")
                # Its place is free: with max_queued 1 this one waits instead of 503.
                after, _ = await send(client, headers("next"))
                return (await blocker)[0].status_code, after.status_code

        assert asyncio.run(scenario()) == (200, 200)
        outcomes = metric_values(fleet, "llm_picker_flow_requests_total")
        assert outcomes[(("flow", "gone"), ("outcome", "cancelled"), ("priority", "0"))] == 1
        wait_until(lambda: in_flight(fleet) == 0, 5, "no slot kept")


def test_client_flow_headers_are_ignored_unless_trusted() -> None:
    with flow_fleet(trust_client_headers=False) as fleet:
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions",
                                   json={"model": MODEL, "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]},
                                   headers=headers("tenant-a", "interactive"), timeout=10)
        assert response.status_code == 200
        outcomes = metric_values(fleet, "llm_picker_flow_requests_total")
        assert outcomes == {(("flow", "default-flow"), ("outcome", "dispatched"),
                             ("priority", "0")): 1.0}


def test_a_flow_over_its_tokens_per_minute_gets_429_while_others_are_served(
        fleet: Fleet) -> None:
    long_prompt = "word " * 80  # ~100 tokens as estimated: over greedy's whole minute (50)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
            first, _ = await send(client, headers("greedy"), content=long_prompt)
            results = await asyncio.gather(
                send(client, headers("greedy"), content=long_prompt),
                *(send(client, headers("polite"), content=long_prompt) for _ in range(3)))
            return [first, *(response for response, _ in results)]

    first, refused, *polite = asyncio.run(scenario())
    assert first.status_code == 200  # an empty minute lets one oversized request through
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert 50 <= int(refused.headers["retry-after"]) <= 60  # when the first leaves the minute
    assert [r.status_code for r in polite] == [200, 200, 200]


async def test_the_status_page_shows_the_queues_in_a_browser(fleet: Fleet) -> None:
    """Item 7: the page's queue table, in a real Chromium: a waiting request's row (loaded
    while it waits), then the same row counting its TTL expiry and a quota refusal."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("NO BROWSER: Debian's chromium is not installed (apt-get install -y chromium)")

    def cell(flow: str, column: int) -> str:
        return (f"document.querySelector('#flows tr[data-flow=\"{flow}\"] "
                f"td:nth-child({column})')?.textContent")

    async with Chromium(chromium, width=1400) as browser, \
            httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
        blocker = asyncio.create_task(send(client, headers("blocker"), 600))  # about 3 s
        await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5, "blocker")
        watched = asyncio.create_task(send(client, headers("watched", "interactive")))
        await asyncio.to_thread(wait_until, lambda: queued(fleet) == 1, 5, "queued")
        await browser.open(f"{fleet.admin_url}/")  # the page opens with the status of now
        await browser.wait_for("document.readyState === 'complete'")
        assert await browser.evaluate(cell("watched", 1)) == "10"
        assert await browser.evaluate(cell("watched", 3)) == "1"  # queued
        assert (await browser.evaluate(cell("watched", 4))).endswith(" s")  # oldest wait
        expired, _ = await watched
        assert expired.status_code == 503
        await blocker
        greedy = [(await send(client, headers("greedy"), content="many words " * 30))[0]
                  for _ in range(2)]  # 83 tokens each, 50 a minute: the second is refused
        assert [r.status_code for r in greedy][-1] == 429
        await browser.wait_for(cell("watched", 7) + " === '1'")  # expired, on a later poll
        assert await browser.evaluate(cell("watched", 3)) == "0"
        assert int(await browser.wait_for(cell("greedy", 8))) >= 1  # quota refused
        assert await browser.evaluate("document.getElementById('flow').hidden") is False


def test_requests_for_a_model_without_a_ready_worker_wait_for_one_to_start() -> None:
    a = SimSpec("a", MODEL, SIM, port=free_port())
    late = SimSpec("late", "late-model", SIM, port=free_port())  # registered, not started
    workers = [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": [s.model]}
               for s in (a, late)]
    settings = {**FAST_HEALTH, "workers": workers,
                "flow": {**FLOW, "ttl_secs": 0.5, "no_worker_ttl_secs": 20}}
    with local_fleet([a], picker_settings=settings) as fleet:
        wait_until(lambda: metric_values(fleet, "llm_picker_worker_healthy")[
            (("worker", "late"),)] == 0, 5, "the late worker to be found down")

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=30) as client:
                body = {"model": "late-model", "max_tokens": 1,
                        "messages": [{"role": "user", "content": "hi"}]}
                waiting = [asyncio.create_task(client.post("/v1/chat/completions", json=body))
                           for _ in range(2)]
                await asyncio.to_thread(wait_until, lambda: queued(fleet) == 2, 5, "2 held")
                # Past ttl_secs, held by no_worker_ttl_secs; all within envoy.yaml's 5 s
                # message_timeout, with the engine's start-up.
                await asyncio.sleep(0.6)
                procs = await asyncio.to_thread(start_sims, [late], fleet.workdir)
                fleet.processes["sim-late"] = procs[0]
                return list(await asyncio.gather(*waiting))

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200, 200]
        assert {r.headers[SIM_HEADER] for r in responses} == {"late"}


@pytest.mark.parametrize("gateway", [False, True], ids=["envoy.yaml", "gateway"])
def test_a_waiting_interactive_request_preempts_a_running_batch_one(gateway: bool) -> None:
    """flow.preempt through real Envoy: the one slot is held by a batch request with ~2 s of
    generation left; an interactive request ends it instead of waiting. The batch client gets
    the picker's 503 `preempted` with Retry-After (Envoy honours an immediate response the
    picker sends unasked), the interactive one is served at once, and nothing is counted
    twice or left in flight.

    Why Envoy takes it unasked: envoyproxy/envoy source/extensions/filters/http/ext_proc/
    ext_proc.cc, `Filter::onReceiveMessage`, `case ProcessingResponse::ResponseCase::
    kImmediateResponse` - unlike the headers, body and trailers cases it checks no processing
    state (only the filter's `disable_immediate_response`), closes the stream and sends the
    local reply."""
    saturation = {"max_in_flight_per_worker": 1, "headroom_miss_rate": 0}
    with flow_fleet(gateway=gateway, preempt=True, saturation=saturation) as fleet:
        async def scenario() -> tuple[httpx.Response, httpx.Response, float]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
                batch = asyncio.create_task(send(client, headers("bulk", "batch"), 400))
                await asyncio.to_thread(wait_until, lambda: in_flight(fleet) == 1, 5,
                                        "the batch request")
                asked = time.monotonic()
                interactive, served = await send(client, headers("chat", "interactive"))
                return (await batch)[0], interactive, served - asked

        batch, interactive, waited = asyncio.run(scenario())
        assert interactive.status_code == 200
        assert waited < 1.0  # not the ~2 s the batch request had left
        assert batch.status_code == 503, batch.text
        assert batch.json()["error"]["code"] == "preempted"
        assert batch.headers["retry-after"] == "1"
        flows = metric_values(fleet, "llm_picker_flow_requests_total")
        assert flows[(("flow", "bulk"), ("outcome", "preempted"), ("priority", "-1"))] == 1
        assert flows[(("flow", "chat"), ("outcome", "dispatched"), ("priority", "10"))] == 1
        ended = metric_values(fleet, "llm_picker_requests_total")
        assert sum(v for k, v in ended.items() if ("outcome", "preempted") in k) == 1
        wait_until(lambda: in_flight(fleet) == 0, 5, "no slot kept")
        # Envoy reset the upstream request, and the engine stopped generating it (as vLLM
        # does for a client gone), long before its 400 tokens.
        stats = loopback().get(f"{fleet.sim_url('a')}/sim/stats").json()
        assert (stats["cancelled"], stats["completed"]) == (1, 1)
