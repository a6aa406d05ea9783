"""The flow controller's decisions on a registry of real workers, without a running picker:
shedding order, bounds, EDF, fairness by tokens, a ticket's exactly-once end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from picker.errors import FlowRefused, QuotaExceeded
from picker.fleet.worker_spec import WorkerSpec
from picker.routing.flow import (
    FlowAsk,
    FlowController,
    FlowKey,
    FlowSettings,
    SaturationDetector,
    Ticket,
)
from tests.live import Fleet

MODEL = "m"


def controller(**settings: object) -> tuple[FlowController, Fleet]:
    """A controller over one worker with room for one request."""
    fleet = Fleet([WorkerSpec(url="http://127.0.0.1:1", id="w", models=[MODEL])])
    flow = FlowSettings.model_validate({"enabled": True, "ttl_secs": 5.0,
                                        "saturation": {"max_in_flight_per_worker": 1},
                                        **settings})
    return FlowController(flow, SaturationDetector(fleet.registry, flow.saturation)), fleet


def ask(priority: int, flow: str, tokens: float = 1.0,
        slo_ttft_secs: float | None = None) -> FlowAsk:
    return FlowAsk(FlowKey(priority, flow), MODEL, tokens, slo_ttft_secs)


async def hold(flow: FlowController, fleet: Fleet) -> Ticket:
    """Take the one place: dispatched and opened on the worker."""
    ticket = await flow.admit(ask(0, "holder"))
    fleet.set_in_flight(fleet[0], 1)
    ticket.opened()
    return ticket


async def served(flow: FlowController, fleet: Fleet, holder: Ticket,
                 waiting: Sequence[asyncio.Task[Ticket]]) -> list[FlowAsk]:
    """Release the place, then serve the waiters one at a time; their asks in dispatch order."""
    order: list[FlowAsk] = []
    fleet.set_in_flight(fleet[0], 0)
    holder.finish()
    pending = set(waiting)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            ticket = task.result()
            order.append(ticket.ask)
            ticket.finish()
    return order


async def queue(flow: FlowController, asks: Sequence[FlowAsk]) -> list[asyncio.Task[Ticket]]:
    tasks = []
    for one in asks:
        tasks.append(asyncio.create_task(flow.admit(one)))
        await asyncio.sleep(0)  # queued in this order
    return tasks


def test_a_full_queue_sheds_the_newest_of_the_lowest_band_for_a_higher_one() -> None:
    async def scenario() -> tuple[FlowRefused, list[FlowAsk]]:
        flow, fleet = controller(max_queued=3)
        holder = await hold(flow, fleet)
        old, new, mid = await queue(flow, [ask(-5, "old"), ask(-5, "new"), ask(-1, "mid")])
        vip = await queue(flow, [ask(3, "vip")])
        with pytest.raises(FlowRefused) as shed:
            await new
        return shed.value, await served(flow, fleet, holder, [old, mid, *vip])

    shed, order = asyncio.run(scenario())
    assert (shed.status, shed.code) == (503, "shed")
    assert [one.key.fairness_id for one in order] == ["vip", "mid", "old"]


def test_a_newcomer_with_nothing_lower_to_shed_is_refused() -> None:
    async def scenario() -> FlowRefused:
        flow, fleet = controller(max_queued=1)
        await hold(flow, fleet)
        await queue(flow, [ask(2, "first")])
        with pytest.raises(FlowRefused) as refused:
            await flow.admit(ask(2, "second"))
        return refused.value

    refused = asyncio.run(scenario())
    assert (refused.status, refused.code, refused.headers()) == \
        (503, "queue_full", {"retry-after": "1"})


def test_a_band_bound_refuses_in_that_band_only() -> None:
    async def scenario() -> None:
        flow, fleet = controller(band_max_queued={-1: 1})
        await hold(flow, fleet)
        await queue(flow, [ask(-1, "a"), ask(0, "b")])
        with pytest.raises(FlowRefused):
            await flow.admit(ask(-1, "c"))
        await queue(flow, [ask(0, "d")])
        queued = {(row.key.priority, row.key.fairness_id): row.queued
                  for row in flow.stats().flows if row.queued}
        assert queued == {(-1, "a"): 1, (0, "b"): 1, (0, "d"): 1}

    asyncio.run(scenario())


def test_edf_serves_the_earliest_first_token_deadline_first() -> None:
    async def scenario() -> list[float]:
        flow, fleet = controller(ordering="edf")
        holder = await hold(flow, fleet)
        waiting = await queue(flow, [ask(0, "t", 1), ask(0, "t", 2, slo_ttft_secs=0.5),
                                     ask(0, "t", 3, slo_ttft_secs=2.0)])
        return [one.tokens for one in await served(flow, fleet, holder, waiting)]

    # Without a deadline of its own a request's is its TTL's (5 s): last.
    assert asyncio.run(scenario()) == [2.0, 3.0, 1.0]


def test_token_fairness_serves_the_flow_that_was_served_fewer_tokens() -> None:
    async def scenario() -> list[FlowAsk]:
        flow, fleet = controller(fairness="tokens")
        holder = await hold(flow, fleet)
        # "big" asks for 100 tokens a request, "small" for 10: small gets ~10 for big's 1.
        waiting = await queue(flow, [ask(0, "big", 100)] * 3 + [ask(0, "small", 10)] * 12)
        return await served(flow, fleet, holder, waiting)

    order = [one.key.fairness_id for one in asyncio.run(scenario())]
    assert order[:12].count("small") >= 10


def test_a_ticket_ends_once_whatever_reports_it() -> None:
    async def scenario() -> int:
        flow, fleet = controller()
        ticket = await hold(flow, fleet)
        ticket.finish()
        ticket.finish()
        ticket.cancel()
        return flow.stats().active

    assert asyncio.run(scenario()) == 0


def test_stats_show_each_flows_queue_oldest_wait_and_how_requests_left() -> None:
    """What the status page's queue table shows (picker.observe.status.view._flow_view)."""
    from picker.observe.status.view import _flow_view

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        flow, fleet = controller(max_queued=2, quotas={"greedy": {"requests_per_minute": 1}})
        (await flow.admit(ask(5, "greedy"))).finish()
        with pytest.raises(QuotaExceeded):
            await flow.admit(ask(5, "greedy"))
        holder = await hold(flow, fleet)
        waiting = await queue(flow, [ask(-1, "old"), ask(-1, "new")])
        await asyncio.sleep(0.05)
        await queue(flow, [ask(3, "vip")])  # sheds "new"
        during = _flow_view(flow.stats())
        holder.finish()
        fleet.set_in_flight(fleet[0], 0)
        with pytest.raises(FlowRefused):
            await waiting[1]
        return during, _flow_view(flow.stats())

    during, _ = asyncio.run(scenario())
    rows = {(row["priority"], row["flow"]): row for row in during["flows"]}  # type: ignore
    assert list(rows) == [(5, "greedy"), (3, "vip"), (0, "holder"), (-1, "new"), (-1, "old")]
    assert rows[(3, "vip")]["queued"] == 1 and rows[(-1, "old")]["queued"] == 1
    assert rows[(-1, "old")]["oldest_wait_secs"] >= 0.05
    assert rows[(-1, "new")]["queued"] == 0 and rows[(-1, "new")]["left"]["shed"] == 1
    assert rows[(5, "greedy")]["left"]["dispatched"] == 1
    assert rows[(5, "greedy")]["left"]["quota_exceeded"] == 1
    assert rows[(0, "holder")]["left"] == {
        "dispatched": 1, "quota_exceeded": 0, "queue_full": 0, "shed": 0, "ttl_expired": 0,
        "no_ready_worker": 0, "cancelled": 0, "preempted": 0}


def test_a_waiting_higher_band_request_ends_the_newest_of_the_lowest_running_band() -> None:
    """flow.preempt: one running sheddable request is ended per blocked non-sheddable waiter
    (llm-d-router's demand-driven eviction), the lowest band first and in it the newest; the
    waiter gets the slot once the ended request's lease ends."""
    async def run() -> None:
        flow, fleet = controller(preempt=True,
                                 saturation={"max_in_flight_per_worker": 3})
        ended: list[tuple[str, str]] = []
        running = []
        for priority, name in ((-1, "old"), (-2, "low"), (-1, "new")):
            ticket = await flow.admit(ask(priority, name))
            ticket.opened()
            assert ticket.preemptible(
                lambda error, name=name: ended.append((name, error.code)))
            running.append(ticket)
        fleet.set_in_flight(fleet[0], 3)
        first = asyncio.create_task(flow.admit(ask(0, "interactive")))
        await asyncio.sleep(0)
        assert ended == [("low", "preempted")]  # the lowest band, whatever its age
        second = asyncio.create_task(flow.admit(ask(5, "urgent")))
        await asyncio.sleep(0)
        assert ended == [("low", "preempted"), ("new", "preempted")]  # then the newest
        assert not first.done() and not second.done()  # until a slot is free
        fleet.set_in_flight(fleet[0], 2)
        running[1].finish()
        urgent = await second
        assert urgent.ask.key.priority == 5
        urgent.opened()
        # The other waiter already has a request ending for it: nothing more is ended.
        assert ended == [("low", "preempted"), ("new", "preempted")]
        fleet.set_in_flight(fleet[0], 2)  # "old" and "urgent"
        running[2].finish()
        assert (await first).ask.key.priority == 0
        rows = {(row.key.priority, row.key.fairness_id): row.left
                for row in flow.stats().flows}
        assert rows[(-2, "low")]["preempted"] == 1 and "preempted" not in rows[(-1, "old")]

    asyncio.run(run())


def test_without_preempt_or_for_a_request_that_is_not_sheddable_nothing_is_ended() -> None:
    async def run() -> None:
        for preempt, priority in ((False, -1), (True, 0)):
            flow, fleet = controller(preempt=preempt)
            ticket = await flow.admit(ask(priority, "running"))
            ticket.opened()
            assert not ticket.preemptible(lambda error: pytest.fail("ended"))
            fleet.set_in_flight(fleet[0], 1)
            waiting = asyncio.create_task(flow.admit(ask(10, "interactive")))
            await asyncio.sleep(0)
            assert not waiting.done()
            fleet.set_in_flight(fleet[0], 0)
            ticket.finish()
            await waiting

    asyncio.run(run())


def test_in_a_band_the_flow_holding_the_most_slots_is_preempted_first() -> None:
    """Ending the newest request whatever its flow would take slots from the flow that dispatch
    just served, undoing its fairness: the flow holding more slots gives one back first."""
    async def run() -> None:
        flow, fleet = controller(preempt=True, saturation={"max_in_flight_per_worker": 3})
        ended: list[str] = []
        for name in ("big", "big", "small"):  # "small" is the newest
            ticket = await flow.admit(ask(-1, name))
            ticket.opened()
            ticket.preemptible(lambda error, name=name: ended.append(name))
        fleet.set_in_flight(fleet[0], 3)
        waiting = asyncio.create_task(flow.admit(ask(10, "interactive")))
        await asyncio.sleep(0)
        assert ended == ["big"]
        waiting.cancel()

    asyncio.run(run())


def test_a_waiter_ends_one_request_even_while_the_slot_it_freed_does_not_show() -> None:
    """The ended request's lease ends at once, but the room it frees may not show yet (engine
    signals change at the next scrape; another process may take the slot): the waiter must not
    end one running request after another meanwhile."""
    async def run() -> None:
        flow, fleet = controller(preempt=True, saturation={"max_in_flight_per_worker": 3})
        ended: list[Ticket] = []
        loop = asyncio.get_running_loop()
        for _ in range(3):
            ticket = await flow.admit(ask(-1, "bulk"))
            ticket.opened()
            # As the ext_proc stream does: the request ends soon after (scheduled, since `end`
            # runs under the controller's lock), its ticket with it.
            ticket.preemptible(lambda error, ticket=ticket: (ended.append(ticket),
                                                             loop.call_soon(ticket.finish)))
        fleet.set_in_flight(fleet[0], 3)  # still counted full, as a stale signal would be
        waiting = asyncio.create_task(flow.admit(ask(10, "interactive")))
        for _ in range(5):
            await asyncio.sleep(0)
            flow.tick()
        assert len(ended) == 1
        fleet.set_in_flight(fleet[0], 2)  # the signal catches up
        flow.tick()
        (await waiting).finish()
        # The waiter dispatched, its promise is spent: a new waiter may end another.
        fleet.set_in_flight(fleet[0], 3)
        second = asyncio.create_task(flow.admit(ask(10, "interactive")))
        await asyncio.sleep(0)
        assert len(ended) == 2
        second.cancel()

    asyncio.run(run())
