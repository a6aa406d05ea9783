"""Sizing the approximate index from measurements (picker/prefix/calibration.py)."""

from __future__ import annotations

import pytest

from picker.fleet.engine_load import EngineCounter, EngineLoad
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import WorkerSpec
from picker.prefix.calibration import Calibration
from picker.prefix.producer import PrefixProducer, PrefixSettings
from picker.routing.request import Api, RoutingRequest
from tests.live import Fleet

BLOCK = 64
PROMPT_CHARS = BLOCK * 300


def scrape(at: float, prompt_tokens: float | None = None, hits: float | None = None,
           blocks: int = 10) -> EngineLoad:
    counters = {}
    if prompt_tokens is not None:
        counters[EngineCounter.PROMPT_TOKENS] = prompt_tokens
    if hits is not None:
        counters[EngineCounter.PREFIX_HITS] = hits
    return EngineLoad(scraped_at=at, num_gpu_blocks=blocks, block_size=16, counters=counters)


def producer(**settings: object) -> PrefixProducer:
    return PrefixProducer(PrefixSettings(enabled=True, block_size=BLOCK, capacity_blocks=1000,
                                         **settings))  # type: ignore[arg-type]


def route(p: PrefixProducer, fleet: Fleet, text: str) -> None:
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text=text)
    _, prompt = p.annotate(request, fleet)
    p.record(prompt, fleet[0])


@pytest.mark.parametrize(
    ("margin", "tokens_counted", "expected_blocks"),
    [
        # 19200 characters sent per 3200 tokens counted: 6 chars/token; 160 tokens x 6 = 960
        # characters = 15 blocks of 64, 16 with the 10% margin.
        (1.0, 3200.0, 15),
        (1.1, 3200.0, 16),
        # 4 chars/token (4800 tokens): 640 characters = 10 blocks
        (1.0, 4800.0, 10),
    ],
)
def test_capacity_uses_the_measured_characters_per_token(
        margin: float, tokens_counted: float, expected_blocks: int) -> None:
    p = producer(capacity_margin=margin)
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], scrape(0.0, prompt_tokens=0.0))
    route(p, fleet, "a" * PROMPT_CHARS)  # the baseline
    assert p.index.blocks_of("w") == 300  # configured capacity until measured
    fleet.set_engine(fleet[0], scrape(1.0, prompt_tokens=tokens_counted))
    route(p, fleet, "b" * PROMPT_CHARS)
    assert p.index.blocks_of("w") == expected_blocks


def test_no_engine_counters_no_guess_until_responses_tell() -> None:
    p = producer(capacity_margin=1.0)
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], scrape(0.0))
    route(p, fleet, "a" * PROMPT_CHARS)
    assert p.index.blocks_of("w") == 300  # never sized on an assumed ratio
    fleet.registry.observe(fleet[0], Observation(prompt_tokens=100, prompt_chars=500))
    fleet.set_engine(fleet[0], scrape(1.0))
    route(p, fleet, "b" * PROMPT_CHARS)
    assert p.index.blocks_of("w") == 12  # 160 tokens x 5 chars = 800 characters


def test_autotune_off_keeps_the_configured_capacity() -> None:
    p = producer(autotune_capacity=False)
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], scrape(0.0, prompt_tokens=0.0))
    route(p, fleet, "a" * PROMPT_CHARS)
    fleet.set_engine(fleet[0], scrape(1.0, prompt_tokens=100.0))
    route(p, fleet, "b" * PROMPT_CHARS)
    assert p.index.blocks_of("w") == 600


@pytest.mark.parametrize(
    ("predicted_units", "real_hits", "direction"),
    [
        (4000, 2000.0, "grow"),  # 1000 tokens predicted, the engine hit twice that
        (4000, 1000.0, "hold"),  # as predicted
        (4000, 300.0, "shrink"),  # the index remembers what the engine evicted
        (0, 100.0, "hold"),  # too little to say anything
    ],
)
def test_correction_follows_the_engines_own_hits(predicted_units: int, real_hits: float,
                                                 direction: str) -> None:
    calibration = Calibration(BLOCK, sees_tokens=False, margin=1.0)
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    worker = fleet[0]
    fleet.set_engine(worker, scrape(0.0, prompt_tokens=0.0, hits=0.0))
    calibration.recorded(worker, 0, 0)
    fleet.set_engine(worker, scrape(1.0, prompt_tokens=4000.0, hits=0.0))
    calibration.recorded(worker, 16000, 0)  # 4 chars/token measured
    fleet.set_engine(worker, scrape(2.0, prompt_tokens=8000.0, hits=real_hits))
    calibration.recorded(worker, 16000, predicted_units)
    state = calibration.snapshot()["w"]
    assert state.units_per_token == pytest.approx(4.0)
    expected = {"grow": state.correction > 1.0, "hold": state.correction == 1.0,
                "shrink": state.correction < 1.0}
    assert expected[direction], state


def test_token_units_need_no_ratio() -> None:
    calibration = Calibration(16, sees_tokens=True, margin=1.0)
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], scrape(0.0, blocks=100))
    assert calibration.recorded(fleet[0], 10, 0) == 100  # 100 engine blocks of 16 tokens
