"""picker.routing.model_rewrite through the routing service (in-process, no proxy): a weighted
split holds over many requests, sticky sessions keep their target, the header names a target,
and the split shows in metrics and decision records."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from pydantic import ValidationError

from picker.config import PickerConfig
from picker.errors import ConfigError, InvalidRequest
from picker.routing.openai_body import parse_request
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest
from picker.runtime import Host, PickerRuntime

CANARY = {"name": "food-canary", "matches": [{"model": {"type": "Exact", "value": "food"}}],
          "targets": [{"model_rewrite": "food-v1", "weight": 90},
                      {"model_rewrite": "food-v2", "weight": 10}]}


def runtime(*rules: dict[str, object]) -> PickerRuntime:
    workers = [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": [model]}
               for i, model in enumerate(["food-v1", "food-v2", "other"])]
    return PickerRuntime(PickerConfig.model_validate({
        "workers": workers, "explain": {"enabled": True},
        "model_rewrites": {"rules": list(rules)}}))


def request(model: str = "food", **headers: str) -> RoutingRequest:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return parse_request("/v1/chat/completions", body.encode(), headers)


def test_a_90_10_split_over_1000_requests_is_within_binomial_bounds() -> None:
    """Each request goes to a worker of its drawn target, and the engine's body names it."""
    picker = runtime(CANARY)
    n, p = 1000, 0.1
    seen: Counter[str] = Counter()
    for _ in range(n):
        lease = picker.routing.route_sync(request())
        assert lease.forward is not None and lease.forward.body is not None
        model = json.loads(lease.forward.body)["model"]
        assert lease.worker.spec.serves(model)
        seen[model] += 1
        lease.release(Outcome.COMPLETED)
    # Five standard deviations (sd = 9.5): a correct split fails about once in 3.5 million.
    bound = 5 * math.sqrt(n * p * (1 - p))
    assert abs(seen["food-v2"] - n * p) < bound, seen
    assert seen["food-v1"] + seen["food-v2"] == n
    metric = picker.metrics.model_rewrites
    assert metric.labels("food-canary", "food", "food-v2")._value.get() == seen["food-v2"]
    assert metric.labels("food-canary", "food", "food-v1")._value.get() == seen["food-v1"]


def test_decision_records_name_the_requested_model_and_the_rule() -> None:
    picker = runtime(CANARY)
    lease = picker.routing.route_sync(request())
    assert lease.choice.decision is not None
    record = lease.choice.decision.to_dict()
    assert record["requested_model"] == "food" and record["rewrite_rule"] == "food-canary"
    assert record["model"] in ("food-v1", "food-v2")


def test_a_sticky_rule_keeps_each_session_on_one_target_and_still_splits() -> None:
    picker = runtime({**CANARY, "sticky": True})
    by_session = {}
    for session in range(300):
        targets = set()
        for _ in range(3):
            lease = picker.routing.route_sync(request(**{"x-session-id": f"s{session}"}))
            assert lease.forward is not None and lease.forward.body is not None
            targets.add(json.loads(lease.forward.body)["model"])
            lease.release(Outcome.COMPLETED)
        assert len(targets) == 1
        by_session[session] = targets.pop()
    v2 = sum(1 for target in by_session.values() if target == "food-v2")
    assert abs(v2 - 30) < 5 * math.sqrt(300 * 0.1 * 0.9), v2


def test_the_header_names_the_target_unless_a_rule_matches() -> None:
    picker = runtime(CANARY)
    named = {"x-gateway-model-name-rewrite": "food-v2"}
    lease = picker.routing.route_sync(request("other", **named))
    assert lease.worker.id == "w1"
    assert lease.forward is not None and lease.forward.body is not None
    assert json.loads(lease.forward.body)["model"] == "food-v2"
    # llm-d's name reads the same; a rule for the requested model decides over the header.
    for _ in range(20):
        ruled = picker.routing.route_sync(request(**{"x-llm-d-model-name-rewrite": "other"}))
        assert ruled.worker.id in ("w0", "w1")
    with pytest.raises(InvalidRequest, match="x-gateway-model-name-rewrite"):
        picker.routing.route_sync(request("other", **{"x-gateway-model-name-rewrite": ""}))


def test_an_unmatched_model_is_sent_on_unchanged() -> None:
    lease = runtime(CANARY).routing.route_sync(request("other"))
    assert lease.forward is None and lease.worker.id == "w2"


@pytest.mark.parametrize(("rules", "message"), [
    ([{**CANARY, "targets": [{"model_rewrite": "a", "weight": 1}, {"model_rewrite": "b"}]}],
     "every target or on none"),
    ([CANARY, CANARY], "used twice"),
    ([{**CANARY, "targets": []}], "at least 1"),
    ([{**CANARY, "targets": [{"model_rewrite": "a", "weight": 0}]}], "greater than or equal"),
])
def test_bad_rules_are_refused_naming_what_is_wrong(rules: list[object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PickerConfig.model_validate({"model_rewrites": {"rules": rules}})


def test_litellm_mode_refuses_rules_naming_the_key() -> None:
    """LiteLLM has chosen the model group before the picker sees the call: a rule could only
    ever fail its requests, so it is refused at start-up."""
    config = PickerConfig.model_validate({"model_rewrites": {"rules": [CANARY]}})
    with pytest.raises(ConfigError, match="model_rewrites"):
        PickerRuntime(config, host=Host.LITELLM)
