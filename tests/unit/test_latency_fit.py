"""The learned latency model (picker.fleet.latency_fit): it recovers how an engine answers,
follows it when it changes, and the picker learns it from finished requests, predicts with it
in decision records, exports its error, and scores with it (`learned_ttft`)."""

from __future__ import annotations

import random

import pytest

from picker.config import PickerConfig
from picker.fleet.engine_load import EngineLoad
from picker.fleet.latency_fit import MIN_SAMPLES, LatencyFit, features
from picker.policies.scorers import SCORERS
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.runtime import PickerRuntime

# Seconds per unit of each feature: fixed cost, per 1k uncached tokens, per waiting and running
# request, per unit of KV usage, per 1k tokens of prefill sent ahead.
TRUTH = (0.02, 0.08, 0.015, 0.002, 0.03, 0.06)


def engine_ttft(x: tuple[float, ...], truth: tuple[float, ...] = TRUTH) -> float:
    return sum(a * b for a, b in zip(truth, x, strict=True))


def random_features(rng: random.Random) -> tuple[float, ...]:
    engine = EngineLoad(scraped_at=0.0, waiting=rng.randint(0, 8), running=rng.randint(0, 32),
                        kv_usage=rng.random())
    return features(rng.uniform(0, 4000), engine, rng.uniform(0, 3000), fresh=True)


def trained(samples: int, rng: random.Random, fit: LatencyFit | None = None,
            truth: tuple[float, ...] = TRUTH) -> LatencyFit:
    fit = fit or LatencyFit()
    for _ in range(samples):
        x = random_features(rng)
        fit = fit.learned(x, engine_ttft(x, truth) * rng.uniform(0.95, 1.05))
    return fit


def test_it_says_nothing_until_it_has_learned_a_little() -> None:
    rng = random.Random(1)
    x = random_features(rng)
    assert trained(MIN_SAMPLES - 1, rng).predict(x) is None
    assert trained(MIN_SAMPLES, rng).predict(x) is not None


def test_it_recovers_an_engines_latency_within_ten_percent() -> None:
    rng = random.Random(2)
    fit = trained(300, rng)
    for _ in range(50):
        x = random_features(rng)
        predicted = fit.predict(x)
        assert predicted is not None
        assert predicted == pytest.approx(engine_ttft(x), rel=0.10)


def test_it_follows_an_engine_that_slows_down() -> None:
    rng = random.Random(3)
    slower = tuple(2 * v for v in TRUTH)
    fit = trained(300, rng, trained(300, rng), truth=slower)
    x = random_features(rng)
    assert fit.predict(x) == pytest.approx(engine_ttft(x, slower), rel=0.15)


def runtime() -> PickerRuntime:
    return PickerRuntime(PickerConfig.model_validate({
        "policy": {"name": "round_robin"}, "explain": {"enabled": True},
        "workers": [{"url": "http://fast:1", "id": "fast", "models": ["m"]},
                    {"url": "http://slow:1", "id": "slow", "models": ["m"]}]}))


def test_the_picker_learns_each_engine_from_its_answers_and_scores_with_it() -> None:
    r = runtime()
    seconds_per_char = {"fast": 0.00002, "slow": 0.0002}
    rng = random.Random(4)
    for i in range(4 * MIN_SAMPLES):
        prompt = "x" * rng.randint(100, 8000)
        request = RoutingRequest(model="m", api=Api.CHAT, prompt_text=prompt,
                                 headers={"x-request-id": f"r{i}"})
        lease = r.routing.route_sync(request)
        ttft = 0.01 + seconds_per_char[lease.worker.id] * len(prompt)
        lease.release(Outcome.COMPLETED, ResponseSample(ttft, 0.01, 8, None))
    fast, slow = (r.registry.get(name) for name in ("fast", "slow"))
    assert fast is not None and slow is not None
    assert fast.latency.samples == slow.latency.samples == 2 * MIN_SAMPLES
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="y" * 6000)
    scores = SCORERS["learned_ttft"].score(request, [fast, slow], 0.0, 5.0)
    assert scores[0] == 1.0 and scores[1] is not None and scores[1] < 0.5
    # Its error is exported, and the decision record shows its prediction beside the observed.
    errors = r.metrics.registry.get_sample_value(
        "llm_picker_audit_learned_ttft_error_seconds_count", {"worker": "fast"})
    assert errors is not None and errors >= MIN_SAMPLES - 1
    assert r.decisions is not None
    record = r.decisions.find(f"r{4 * MIN_SAMPLES - 1}")
    assert record is not None
    audit = record.to_dict()["audit"]
    assert audit["learned_ttft_secs"] == pytest.approx(audit["observed_ttft_secs"], rel=0.25)


def test_a_weighted_profile_takes_the_learned_scorer() -> None:
    config = PickerConfig.model_validate({"policy": {"name": "weighted", "params": {
        "scorers": {"learned_ttft": 1.0, "prefix": 1.0}}}})
    assert "learned_ttft" in config.policy_params()["weighted"].model_dump()["scorers"]
