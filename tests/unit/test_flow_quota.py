"""Per-flow quotas on a controllable clock: refill, Retry-After, refunds, generated tokens."""

from __future__ import annotations

import pytest

from picker.errors import QuotaExceeded
from picker.routing.flow import FlowSettings
from picker.routing.flow.quota import QuotaBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book(**quota: int) -> tuple[QuotaBook, Clock]:
    clock = Clock()
    settings = FlowSettings.model_validate({"quotas": {"f": quota}})
    return QuotaBook(settings, clock), clock


def retry_after(quotas: QuotaBook, tokens: float = 0.0) -> int:
    with pytest.raises(QuotaExceeded) as refused:
        quotas.take("f", tokens)
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    return refused.value.retry_after


def test_requests_per_minute_refill_continuously() -> None:
    quotas, clock = book(requests_per_minute=2)
    quotas.take("f", 0)
    quotas.take("f", 0)
    assert retry_after(quotas) == 30  # one request every 30 s
    clock.now += 30
    quotas.take("f", 0)


def test_generated_tokens_push_the_next_request_back() -> None:
    quotas, clock = book(tokens_per_minute=600)
    quotas.take("f", 100)
    quotas.generated("f", 600)  # the bucket is at -100: 200 tokens short for the next
    assert retry_after(quotas, 100) == 20


def test_a_refused_request_gets_its_charge_back() -> None:
    quotas, _ = book(requests_per_minute=1, tokens_per_minute=100)
    quotas.take("f", 100)
    quotas.give_back("f", 100)
    quotas.take("f", 100)


def test_flows_without_a_quota_are_never_refused() -> None:
    quotas, _ = book(requests_per_minute=1)
    for _ in range(100):
        quotas.take("other", 10_000)
