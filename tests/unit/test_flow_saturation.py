"""The saturation detector on a registry of real workers, their engine load set as scrapes set
it: which signals hold dispatches back, and which are ignored."""

from __future__ import annotations

import time

import pytest

from picker.fleet.engine_load import EngineLoad
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import WorkerSpec
from picker.routing.flow import Room, SaturationDetector
from picker.routing.flow.settings import SaturationSettings
from tests.live import Fleet


def fleet(models: tuple[str, ...] = ("m",)) -> Fleet:
    return Fleet([WorkerSpec(url=f"http://127.0.0.1:{i + 1}", id=f"w{i}", models=[model])
                  for i, model in enumerate(models)])


@pytest.mark.parametrize(("settings", "waiting", "kv", "age", "room"), [
    ({}, 50.0, 0.99, 0.0, Room.FREE),  # no threshold set: engine signals are not read
    ({"max_waiting": 5}, 5.0, 0.1, 0.0, Room.SATURATED),
    ({"max_waiting": 5}, 4.0, 0.1, 0.0, Room.FREE),
    ({"max_kv_usage": 0.8}, 0.0, 0.85, 0.0, Room.SATURATED),
    ({"max_kv_usage": 0.8, "max_age_secs": 1}, 0.0, 0.85, 2.0, Room.FREE),  # stale: ignored
])
def test_engine_signals(settings: dict[str, float], waiting: float, kv: float, age: float,
                        room: Room) -> None:
    workers = fleet()
    workers.set_engine(workers[0], EngineLoad(time.monotonic() - age, waiting=waiting,
                                              kv_usage=kv))
    detector = SaturationDetector(workers.registry, SaturationSettings.model_validate(settings))
    assert detector.room("m", 0) is room


def test_in_flight_counts_requests_still_being_routed() -> None:
    workers = fleet(("m", "m"))
    detector = SaturationDetector(workers.registry,
                                  SaturationSettings(max_in_flight_per_worker=2))
    workers.set_in_flight(workers[0], 2)
    workers.set_in_flight(workers[1], 1)
    assert detector.room("m", 0) is Room.FREE
    assert detector.room("m", 1) is Room.SATURATED  # the last place is promised already


def test_a_saturated_worker_does_not_lend_its_places() -> None:
    workers = fleet(("m", "m"))
    workers.set_engine(workers[0], EngineLoad(time.monotonic(), waiting=9.0))
    detector = SaturationDetector(workers.registry, SaturationSettings(
        max_in_flight_per_worker=2, max_waiting=5))
    workers.set_in_flight(workers[1], 2)
    assert detector.room("m", 0) is Room.SATURATED


def test_no_ready_worker_is_worth_waiting_for_an_unserved_model_is_not() -> None:
    workers = fleet(("m", "other"))
    workers.registry.set_healthy(workers[0], False)
    detector = SaturationDetector(workers.registry, SaturationSettings())
    assert detector.room("m", 0) is Room.NO_WORKER
    assert detector.room("nobody-serves-this", 0) is Room.UNSERVED
    workers.registry.set_healthy(workers[1], False)
    assert detector.room("nobody-serves-this", 0) is Room.NO_WORKER  # the fleet is at zero


def test_sheddable_requests_leave_headroom_for_the_bands_above() -> None:
    workers = fleet()
    detector = SaturationDetector(workers.registry, SaturationSettings(
        max_in_flight_per_worker=4, sheddable_share=0.5))
    workers.set_in_flight(workers[0], 2)
    assert detector.room("m", 0, lambda capacity: 0) is Room.SATURATED
    assert detector.room("m", 0) is Room.FREE


def test_a_predicted_ttft_over_the_threshold_saturates_once_the_speed_is_known() -> None:
    workers = fleet()
    detector = SaturationDetector(workers.registry, SaturationSettings(
        max_predicted_ttft_secs=1.0))
    workers.set_engine(workers[0], EngineLoad(time.monotonic(), waiting=10.0))
    assert detector.room("m", 0) is Room.FREE  # no speed learned: nothing predicted
    # 1,000 prompt tokens in 0.5 s: 2,000 tokens/s, a mean TTFT of 0.5 s; 10 waiting ahead.
    workers.registry.observe(workers[0], Observation(prompt_tokens=1000, ttft_secs=0.5))
    assert detector.room("m", 0) is Room.SATURATED
    workers.set_engine(workers[0], EngineLoad(time.monotonic(), waiting=1.0))
    assert detector.room("m", 0) is Room.FREE  # 0.5 s predicted
