"""Learning engine speed (picker/fleet/speed.py) through the registry, and scoring on it."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from picker.fleet.engine_load import EngineCounter, EngineLoad
from picker.fleet.speed import Observation, PrefillBacklog, SpeedModel, predicted_ttft
from picker.fleet.worker_spec import WorkerSpec
from picker.policies import create_policy
from picker.prefix import PrefixMatch
from picker.routing.request import Api, RoutingRequest
from tests.live import Fleet

C = EngineCounter


@pytest.mark.parametrize(
    ("observation", "prefill", "step", "chars"),
    [
        (Observation(prompt_tokens=2000, cached_tokens=0, ttft_secs=0.1), 20000.0, None, None),
        (Observation(prompt_tokens=2000, cached_tokens=1000, ttft_secs=0.1), 10000.0, None,
         None),
        # a short prefill says nothing about the rate
        (Observation(prompt_tokens=40, ttft_secs=0.01), None, None, None),
        (Observation(output_tokens=11, decode_secs=0.1), None, 0.01, None),
        (Observation(prompt_tokens=100, prompt_chars=550), None, None, 5.5),
    ],
)
def test_observe(observation: Observation, prefill: float | None, step: float | None,
                 chars: float | None) -> None:
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.registry.observe(fleet[0], observation)
    speed = fleet[0].speed
    assert speed.prefill_tokens_per_sec == (pytest.approx(prefill) if prefill else None)
    assert speed.decode_step_secs == (pytest.approx(step) if step else None)
    assert speed.chars_per_token == (pytest.approx(chars) if chars else None)


@pytest.mark.parametrize(
    ("grown", "prefill"),
    [
        # vLLM: computed prefill tokens over prefill seconds
        ({C.PREFILL_TOKENS: 4000.0, C.PREFILL_SECS: 0.4, C.TTFT_COUNT: 2.0, C.TTFT_SUM: 0.5},
         10000.0),
        # SGLang: uncached tokens over whole TTFTs
        ({C.PREFIX_QUERIES: 5000.0, C.PREFIX_HITS: 1000.0, C.TTFT_COUNT: 2.0, C.TTFT_SUM: 0.5},
         8000.0),
        ({C.TTFT_COUNT: 2.0, C.TTFT_SUM: 0.5}, None),
    ],
)
def test_scrapes_teach_the_prefill_rate(grown: dict[EngineCounter, float],
                                        prefill: float | None) -> None:
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], EngineLoad(0.0, counters={c: 0.0 for c in grown}))
    fleet.set_engine(fleet[0], EngineLoad(1.0, counters=grown))
    assert fleet[0].speed.prefill_tokens_per_sec == (pytest.approx(prefill) if prefill else None)
    assert fleet[0].speed.ttft_secs == pytest.approx(0.25)


def test_a_restarted_engine_teaches_nothing() -> None:
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    fleet.set_engine(fleet[0], EngineLoad(0.0, counters={C.ITL_SUM: 5.0, C.ITL_COUNT: 100.0}))
    fleet.set_engine(fleet[0], EngineLoad(1.0, counters={C.ITL_SUM: 0.1, C.ITL_COUNT: 10.0}))
    assert fleet[0].speed.decode_step_secs is None


@pytest.mark.parametrize(
    ("waiting", "ahead_tokens", "expected"),
    [
        (2, 0.0, 0.9),  # 2 waiting x 0.2 s + 500 tokens at 1000/s
        (0, 300.0, 0.8),  # 300 tokens sent and not yet prefilled, then its own 500
        (2, 300.0, 0.9),  # both views of the same queue: the larger, not the sum
        (1, 1000.0, 1.5),
    ],
)
def test_predicted_ttft(waiting: float, ahead_tokens: float, expected: float) -> None:
    speed = SpeedModel(prefill_tokens_per_sec=1000.0, ttft_secs=0.2)
    assert predicted_ttft(speed, 500, waiting, ahead_tokens) == pytest.approx(expected)
    assert predicted_ttft(SpeedModel(), 500, waiting, ahead_tokens) is None


@pytest.mark.parametrize(
    ("rate", "now", "left"),
    [
        (1000.0, 10.0, 2000.0),
        (1000.0, 11.5, 500.0),  # drains at the prefill rate
        (1000.0, 13.0, 0.0),  # and never below empty
        (None, 10.0, 0.0),  # rate unknown: nothing could use it
    ],
)
def test_prefill_backlog_drains(rate: float | None, now: float, left: float) -> None:
    assert PrefillBacklog(2000.0, 10.0, 2000.0).left(rate, now) == pytest.approx(left)


def test_prefill_backlog_adds_to_what_is_left() -> None:
    backlog = PrefillBacklog(2000.0, 10.0, 2000.0).plus(300.0, 1000.0, 11.5)
    assert backlog == PrefillBacklog(800.0, 11.5, 2300.0)
    assert backlog.plus(-50.0, 1000.0, 11.5) == backlog  # no negative work


def test_prefill_backlog_is_never_more_than_the_open_requests_were_sent_with() -> None:
    """A prefill rate learned too low keeps the fluid queue full after the requests ended;
    their end empties it (issue 35.3)."""
    slow = 10.0  # tokens/s: 3000 tokens would take 5 minutes
    backlog = PrefillBacklog().plus(1000.0, slow, 0.0).plus(2000.0, slow, 0.0)
    assert backlog.left(slow, 1.0) == pytest.approx(2990.0)
    backlog = backlog.ended(2000.0, slow, 1.0)
    assert backlog.open_tokens == 1000.0 and backlog.left(slow, 1.0) == 1000.0
    backlog = backlog.ended(1000.0, slow, 2.0)
    assert backlog.left(slow, 2.0) == 0.0 and backlog.open_tokens == 0.0
    assert backlog.ended(500.0, slow, 3.0).open_tokens == 0.0  # never below empty


def test_peers_sends_join_the_queue_and_drain_without_an_end() -> None:
    """A peer replica's prompt is prefilled in the same queue as this replica's, but its end is
    never seen here: it leaves the bound as it would drain alone at the engine's rate."""
    rate = 1000.0
    backlog = PrefillBacklog().peer_sent(1000.0, rate, 0.0).plus(1000.0, rate, 0.0)
    assert backlog.left(rate, 0.5) == pytest.approx(1500.0)  # one queue, drained once
    assert backlog.left(rate, 2.5) == 0.0
    # A rate learned too low: once this replica's request ended, only what the peer's tokens
    # could still hold at the learned rate stays ahead.
    slow = 100.0
    backlog = PrefillBacklog().peer_sent(1000.0, slow, 0.0).plus(1000.0, slow, 0.0)
    backlog = backlog.ended(1000.0, slow, 4.0)
    assert backlog.left(slow, 4.0) == pytest.approx(600.0)
    assert backlog.left(slow, 10.0) == 0.0


def fleet_with_speeds(*rates: float | None) -> Fleet:
    fleet = Fleet(WorkerSpec(url=f"h:{i + 1}", id=f"w{i}") for i in range(len(rates)))
    for worker, rate in zip(fleet, rates, strict=True):
        if rate is not None:
            fleet.registry.observe(worker, Observation(prompt_tokens=int(rate),
                                                       cached_tokens=0, ttft_secs=1.0))
    return fleet


def req(total: int, headers: dict[str, str] | None = None, **matched: int) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, headers=headers or {},
                          prefix=PrefixMatch(total, matched, tokens_per_block=100.0))


@pytest.mark.parametrize(
    ("rates", "request_", "expected"),
    [
        # no match anywhere: the faster engine
        ((10000.0, 20000.0), req(20), "w1"),
        # the slow engine holds it: 100 uncached tokens there beat 2000 on the fast one
        ((10000.0, 20000.0), req(20, w0=19), "w0"),
        # speed unknown everywhere: scorers neutral, the prefix decides
        ((None, None), req(20, w0=10), "w0"),
        # a small match on the slow engine does not outweigh twice the prefill speed
        ((10000.0, 20000.0), req(20, w0=2), "w1"),
    ],
)
def test_default_weighted_profile(rates: tuple[float | None, ...], request_: RoutingRequest,
                                  expected: str) -> None:
    policy = create_policy("weighted", {"seed": 0})
    assert policy.pick(request_, fleet_with_speeds(*rates)).id == expected


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        # w0 holds all but one block (100 tokens) but prefills 100 tokens/s: 1 s
        (None, "w0"),
        (0.5, "w1"),  # w0 predicted 1 s: out; w1 2000 tokens at 10000/s = 0.2 s
        (0.05, "w0"),  # both predicted to miss: the scorers decide as without an SLO
    ],
)
def test_an_slo_steers_away_from_engines_predicted_to_miss_it(
        slo: float | None, expected: str) -> None:
    fleet = fleet_with_speeds(100.0, 10000.0)
    policy = create_policy("weighted", {"seed": 0, "scorers": {"prefix": 3.0, "ttft": 1.0}})
    request = replace(req(20, w0=19), slo_ttft_secs=slo)
    assert policy.pick(request, fleet).id == expected


def test_default_profile_reads_the_prefix_without_requiring_it() -> None:
    from picker.policies import parse_params

    assert not parse_params("weighted", {}).needs_prefix()
    assert parse_params("weighted", {"scorers": {"prefix": 1.0}}).needs_prefix()


@pytest.mark.parametrize(
    ("matched", "expected"),
    [
        # a new prompt: the emptier cache (w1) scores higher
        ({}, [0.0, 0.9]),
        # a prompt w0 holds part of: no opinion, or it would push sessions off their history
        ({"w0": 5}, [None, None]),
    ],
)
def test_cache_space_scores_only_prompts_no_one_holds(
        matched: dict[str, int], expected: list[float | None]) -> None:
    from picker.policies.scorers import SCORERS

    request = RoutingRequest(model="m", api=Api.CHAT, headers={},
                             prefix=PrefixMatch(20, matched, held={"w0": 100, "w1": 10}))
    scores = SCORERS["cache_space"].score(request, fleet_with_speeds(None, None), 0.0, 5.0)
    assert scores == [None if e is None else pytest.approx(e) for e in expected]


def sent(fleet: Fleet, worker: int, tokens: float) -> None:
    fleet.registry.sent_prefill(fleet[worker], tokens)


@pytest.mark.parametrize(
    ("matched", "expected"),
    [
        # a new prompt (2000 tokens): w0 has 2000 tokens of it ahead, so 4 s against 2 s
        ({}, [0.5, 1.0]),
        # w0 holds all but 100 tokens: 0.1 s there, the work ahead ignored, or this session's
        # own first prefill would send its next turn away from its history
        ({"w0": 19}, [1.0, 0.05]),
    ],
)
def test_ttft_waits_behind_work_sent_only_for_a_prompt_without_a_home(
        matched: dict[str, int], expected: list[float]) -> None:
    from picker.policies.scorers import SCORERS

    fleet = fleet_with_speeds(1000.0, 1000.0)
    sent(fleet, 0, 2000.0)
    scores = SCORERS["ttft"].score(req(20, **matched), fleet, time.monotonic(), 5.0)
    assert scores == [pytest.approx(e, abs=0.01) for e in expected]


def test_default_profile_sends_a_new_prompt_past_a_fast_engine_busy_prefilling() -> None:
    fleet = fleet_with_speeds(10000.0, 20000.0)
    policy = create_policy("weighted", {"seed": 0})
    assert policy.pick(req(20), fleet).id == "w1"  # idle: the faster
    sent(fleet, 1, 4000.0)  # 0.2 s of prefill ahead on w1: 0.3 s there, 0.2 s on w0
    assert policy.pick(req(20), fleet).id == "w0"


def room_req(matched: dict[str, int], held: dict[str, int],
             capacity: dict[str, int]) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, prefix=PrefixMatch(
        20, matched, held=held, tokens_per_block=100.0, capacity=capacity))


@pytest.mark.parametrize(
    ("matched", "held", "capacity", "expected"),
    [
        # a new prompt: the fast engine (w1) would be filled past 85%, the slow one has room
        ({}, {"w0": 50, "w1": 70}, {"w0": 100, "w1": 100}, "w0"),
        # room on both: speed decides
        ({}, {"w0": 50, "w1": 60}, {"w0": 100, "w1": 100}, "w1"),
        # room on neither: as without the rule
        ({}, {"w0": 90, "w1": 90}, {"w0": 100, "w1": 100}, "w1"),
        # capacities unknown (KV-event index): as without the rule
        ({}, {"w0": 50, "w1": 70}, {}, "w1"),
        # the full engine holds the prompt: it stays there
        ({"w1": 19}, {"w0": 50, "w1": 90}, {"w0": 100, "w1": 100}, "w1"),
    ],
)
def test_default_profile_places_a_new_prompt_where_it_fits(
        matched: dict[str, int], held: dict[str, int], capacity: dict[str, int],
        expected: str) -> None:
    policy = create_policy("weighted", {"seed": 0})
    fleet = fleet_with_speeds(10000.0, 20000.0)
    assert policy.pick(room_req(matched, held, capacity), fleet).id == expected


def test_a_profile_without_cache_space_ignores_room() -> None:
    policy = create_policy("weighted", {"seed": 0, "scorers": {"prefix": 3.0, "ttft": 1.0}})
    request = room_req({}, {"w0": 50, "w1": 70}, {"w0": 100, "w1": 100})
    assert policy.pick(request, fleet_with_speeds(10000.0, 20000.0)).id == "w1"
