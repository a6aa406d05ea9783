"""LiteLLM success callbacks as speed observations (litellm_plugin/tracking.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from litellm_plugin.tracking import observation_of
from picker.fleet.speed import Observation

T0 = datetime(2025, 1, 1)
USAGE = SimpleNamespace(usage=SimpleNamespace(
    prompt_tokens=1200, completion_tokens=11,
    prompt_tokens_details=SimpleNamespace(cached_tokens=200)))


@pytest.mark.parametrize(
    ("kwargs", "response", "expected"),
    [
        # a stream: first chunk 0.1 s after the start, last 0.2 s after that
        ({"stream": True, "completion_start_time": T0 + timedelta(seconds=0.1)}, USAGE,
         Observation(prompt_tokens=1200, cached_tokens=200, output_tokens=11, ttft_secs=0.1,
                     decode_secs=0.2, prompt_chars=6000)),
        # not streamed: the duration says nothing of prefill, only usage is kept
        ({"completion_start_time": T0 + timedelta(seconds=0.3)}, USAGE,
         Observation(prompt_tokens=1200, cached_tokens=200, output_tokens=11,
                     prompt_chars=6000)),
        # no usage (an error body, a provider without it)
        ({"stream": True}, SimpleNamespace(), Observation(prompt_chars=6000)),
    ],
)
def test_observation_of(kwargs: dict[str, Any], response: Any, expected: Observation) -> None:
    got = observation_of(kwargs, response, T0, T0 + timedelta(seconds=0.3), 6000)
    assert got.ttft_secs == pytest.approx(expected.ttft_secs)
    assert got.decode_secs == pytest.approx(expected.decode_secs)
    assert (got.prompt_tokens, got.cached_tokens, got.output_tokens, got.prompt_chars) == (
        expected.prompt_tokens, expected.cached_tokens, expected.output_tokens,
        expected.prompt_chars)
