"""The headroom sheddable requests leave for the bands above: sized on those bands' recent
in-flight count, on a fake clock; and the flow controller holding a batch request back by it."""

from __future__ import annotations

import asyncio

from picker.fleet.worker_spec import WorkerSpec
from picker.routing.flow import FlowAsk, FlowController, FlowKey, FlowSettings, SaturationDetector
from picker.routing.flow.headroom import Headroom
from tests.live import Fleet

MODEL = "m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_headroom_follows_the_higher_bands_demand() -> None:
    clock = FakeClock()
    headroom = Headroom(0.01, clock)
    assert headroom.slots(MODEL, 8) == 0  # no higher band seen: nothing kept
    headroom.change(MODEL, 3)
    assert headroom.slots(MODEL, 8) == 0  # the moving average has not risen yet
    clock.now += 20
    # mean 3 of 8 slots, r = 8/3: 1 + r + ... + r**5 = 216 is the first sum over 1/0.01.
    assert headroom.slots(MODEL, 8) == 5
    assert headroom.slots("other", 8) == 0  # each model's demand is its own
    assert headroom.slots(MODEL, 1) == 0  # one slot: never all of it
    headroom.change(MODEL, 5)
    clock.now += 20
    assert headroom.slots(MODEL, 8) == 7  # the band above fills the model: all but one slot
    headroom.change(MODEL, -8)
    clock.now += 60
    assert headroom.slots(MODEL, 8) == 0  # idle for long: forgotten


def test_a_zero_miss_rate_keeps_no_headroom() -> None:
    clock = FakeClock()
    headroom = Headroom(0.0, clock)
    headroom.change(MODEL, 3)
    clock.now += 20
    assert headroom.slots(MODEL, 8) == 0


def ask(priority: int) -> FlowAsk:
    return FlowAsk(FlowKey(priority, f"p{priority}"), MODEL, 1.0, None)


def test_a_batch_request_waits_while_free_slots_are_the_interactive_bands_headroom() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fleet = Fleet([WorkerSpec(url=f"http://127.0.0.1:{i + 1}", id=f"w{i}", models=[MODEL])
                       for i in range(2)])
        settings = FlowSettings.model_validate({
            "enabled": True, "ttl_secs": 60.0, "saturation": {"max_in_flight_per_worker": 4}})
        flow = FlowController(settings, SaturationDetector(fleet.registry, settings.saturation),
                              clock=clock)
        interactive = [await flow.admit(ask(10)) for _ in range(3)]
        for ticket in interactive:
            ticket.opened()
        fleet.set_in_flight(fleet[0], 2)
        fleet.set_in_flight(fleet[1], 1)
        clock.now += 20  # 3 interactive requests in flight for 20 s: headroom 5 of 8 slots
        batch = asyncio.create_task(flow.admit(ask(-1)))
        await asyncio.sleep(0)
        flow.tick()
        await asyncio.sleep(0)
        assert not batch.done()  # 5 slots free, all of them headroom
        fleet.set_in_flight(fleet[0], 1)
        interactive[0].finish()  # 6 free: one more than the headroom
        ticket = await asyncio.wait_for(batch, 1.0)
        assert ticket.ask.key.priority == -1

    asyncio.run(scenario())


def test_an_idle_fleet_takes_batch_requests_in_every_slot() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fleet = Fleet([WorkerSpec(url="http://127.0.0.1:1", id="w", models=[MODEL])])
        settings = FlowSettings.model_validate({
            "enabled": True, "saturation": {"max_in_flight_per_worker": 4}})
        flow = FlowController(settings, SaturationDetector(fleet.registry, settings.saturation),
                              clock=clock)
        for slot in range(4):
            ticket = await asyncio.wait_for(flow.admit(ask(-1)), 1.0)
            ticket.opened()
            fleet.set_in_flight(fleet[0], slot + 1)

    asyncio.run(scenario())
