"""Per-flow quotas on a controllable clock: the rolling minute, Retry-After, refunds, generated
tokens, and the table the processes of a group share (two views of one file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.errors import QuotaExceeded
from picker.routing.flow import FlowSettings
from picker.routing.flow.quota import QuotaBook
from picker.routing.flow.quota_table import PROBES, QuotaTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book(table: QuotaTable | None = None, clock: Clock | None = None,
         **quota: int) -> tuple[QuotaBook, Clock]:
    clock = clock or Clock()
    settings = FlowSettings.model_validate({"quotas": {"f": quota}})
    return QuotaBook(settings, table, clock), clock


def retry_after(quotas: QuotaBook, tokens: float = 0.0) -> int:
    with pytest.raises(QuotaExceeded) as refused:
        quotas.take("f", tokens)
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    return refused.value.retry_after


def test_requests_per_minute_is_a_rolling_minute() -> None:
    quotas, clock = book(requests_per_minute=2)
    quotas.take("f", 0)
    clock.now += 20.5
    quotas.take("f", 0)
    assert retry_after(quotas) == 40  # the first leaves the minute at 160
    clock.now = 160.0
    quotas.take("f", 0)
    assert retry_after(quotas) == 20  # the second, at 120.5, counts from 120 (one-second steps)


def test_generated_tokens_push_the_next_request_back() -> None:
    quotas, clock = book(tokens_per_minute=600)
    quotas.take("f", 100)
    clock.now += 10
    quotas.generated("f", 600)  # 700 spent: both charges must leave the minute
    assert retry_after(quotas, 100) == 60


def test_a_request_larger_than_the_budget_waits_for_an_empty_minute() -> None:
    quotas, clock = book(tokens_per_minute=100)
    quotas.take("f", 500)  # an empty minute holds it
    assert retry_after(quotas, 500) == 60
    clock.now += 60
    quotas.take("f", 500)


def test_a_refused_request_gets_its_charge_back() -> None:
    quotas, clock = book(requests_per_minute=1, tokens_per_minute=100)
    quotas.take("f", 100)
    clock.now += 5
    quotas.give_back("f", 100)  # a refund reaches back to the charge's second
    quotas.take("f", 100)


def test_flows_without_a_quota_are_never_refused() -> None:
    quotas, _ = book(requests_per_minute=1)
    for _ in range(100):
        quotas.take("other", 10_000)


def test_processes_sharing_the_table_spend_one_budget(tmp_path: Path) -> None:
    path = tmp_path / "quotas"
    QuotaTable.create(path, rows=2, slots=64)
    clock = Clock()
    first, _ = book(QuotaTable(path, 2, 0, slots=64), clock, requests_per_minute=4)
    second, _ = book(QuotaTable(path, 2, 1, slots=64), clock, requests_per_minute=4)
    first.take("f", 0)
    first.take("f", 0)
    second.take("f", 0)
    clock.now += 30
    second.take("f", 0)
    assert retry_after(first) == 30 and retry_after(second) == 30  # 4 of 4, in both views
    second.give_back("f", 0)  # a process refunds only its own row
    first.take("f", 0)
    clock.now += 30
    first.take("f", 0)  # the first three have left the minute
    second.take("f", 0)


def test_a_full_table_refuses_and_is_counted_and_frees_after_a_minute(tmp_path: Path) -> None:
    full: list[int] = []
    clock = Clock()
    settings = FlowSettings.model_validate({"default_quota": {"requests_per_minute": 10}})
    quotas = QuotaBook(settings, QuotaTable(slots=PROBES), clock, lambda: full.append(1))
    for flow in range(PROBES):  # every slot of the (tiny) table holds a flow spending now
        quotas.take(f"flow-{flow}", 0)
    with pytest.raises(QuotaExceeded, match="no room") as refused:
        quotas.take("one-more", 0)
    assert refused.value.retry_after == 60 and full == [1]
    quotas.take("flow-0", 0)  # flows holding a slot go on
    clock.now += 61
    quotas.take("one-more", 0)  # spending older than the minute frees its slot


def test_a_replica_enforces_its_share_of_each_budget() -> None:
    settings = FlowSettings.model_validate({
        "replica_share": 0.5, "quotas": {"f": {"requests_per_minute": 5}}})
    quotas = QuotaBook(settings, clock=Clock())
    for _ in range(3):  # half of 5, rounded up
        quotas.take("f", 0)
    with pytest.raises(QuotaExceeded):
        quotas.take("f", 0)
    assert settings.quota("other").requests_per_minute == 0  # unlimited stays so
