"""What the runtime says at start and stop: a picker with nothing to route to says so, and
every stop is logged (an operator reading logs must tell a stop from a crash)."""

from __future__ import annotations

import logging

import pytest

from picker.config import PickerConfig
from picker.runtime import Host, PickerRuntime


async def test_no_workers_and_no_discovery_is_a_warning_naming_both_and_the_way_out(
        caplog: pytest.LogCaptureFixture) -> None:
    runtime = PickerRuntime(PickerConfig.model_validate({"admin": {"enabled": False}}))
    with caplog.at_level(logging.INFO, logger="llm_picker"):
        await runtime.start()
        await runtime.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no workers: none in the configuration (workers:) and no discovery source" in (
        warnings[0])
    assert "the admin API is off (admin.enabled)" in warnings[0]
    assert caplog.records[-1].getMessage() == "llm-picker runtime stopped (serve)"


async def test_a_fleet_or_a_litellm_host_gives_no_such_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    declared = PickerConfig.model_validate({"admin": {"enabled": False}, "health": {
        "enabled": False}, "workers": [{"url": "http://127.0.0.1:9", "models": ["m"]}]})
    for runtime in (PickerRuntime(declared),
                    PickerRuntime(PickerConfig(), Host.LITELLM)):
        with caplog.at_level(logging.INFO, logger="llm_picker"):
            await runtime.start()
            await runtime.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
