"""The LiteLLM adapter's part of flow control: the flow its proxy authenticated, and refusals
that keep their Retry-After as LiteLLM exceptions."""

from __future__ import annotations

from typing import Any

import pytest
from litellm.exceptions import RateLimitError, ServiceUnavailableError

from litellm_plugin.choose import Call, _routing_request
from litellm_plugin.errors import to_litellm_error
from picker.errors import FlowRefused, QuotaExceeded


def call(metadata: dict[str, Any]) -> Call:
    return Call(model="m", healthy=[], input=None,
                messages=[{"role": "user", "content": "hi"}],
                request_kwargs={"metadata": metadata})


@pytest.mark.parametrize(("metadata", "flow"), [
    ({"user_api_key_team_id": "t1", "user_api_key_alias": "k1"}, "team:t1"),
    ({"user_api_key_team_id": None, "user_api_key_alias": "k1"}, "key:k1"),
    ({"headers": {"x-gateway-inference-fairness-id": "claimed"}}, None),  # headers: the core's
])
def test_the_flow_is_the_proxys_team_else_its_key(metadata: dict[str, Any],
                                                   flow: str | None) -> None:
    assert _routing_request(call(metadata)).flow_id == flow


def test_refusals_keep_their_retry_after() -> None:
    quota = to_litellm_error(QuotaExceeded("over", retry_after=42), "m")
    assert isinstance(quota, RateLimitError) and quota.headers == {"retry-after": "42"}
    shed = to_litellm_error(FlowRefused("full", "queue_full", 3), "m")
    assert isinstance(shed, ServiceUnavailableError)
    assert shed.headers == {"retry-after": "3"}  # type: ignore[attr-defined]
