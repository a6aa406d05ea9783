"""Hostile and broken requests through the real Envoy: a clear 4xx each, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    settings = {**FAST_HEALTH, "max_body_bytes": 65536}
    with local_fleet([SimSpec("a", MODEL), SimSpec("b", MODEL)],
                     picker_settings=settings) as running:
        yield running


CASES = [
    ("invalid JSON", CHAT, b"{oops", JSON, 400),
    ("JSON array", CHAT, b"[1, 2]", JSON, 400),
    ("JSON number", CHAT, b"42", JSON, 400),
    ("JSON string", CHAT, b'"hello"', JSON, 400),
    ("model missing", CHAT, json.dumps({"messages": []}).encode(), JSON, 400),
    ("model empty", CHAT, json.dumps({"model": "", "messages": []}).encode(), JSON, 400),
    ("model not a string", CHAT, json.dumps({"model": 7, "messages": []}).encode(), JSON, 400),
    ("model 10k chars", CHAT, json.dumps({"model": "m" * 10_000, "messages": []}).encode(),
     JSON, 400),
    ("messages wrong type", CHAT, json.dumps({"model": MODEL, "messages": "hi"}).encode(),
     JSON, 400),
    ("message wrong type", CHAT, json.dumps({"model": MODEL, "messages": [1]}).encode(),
     JSON, 400),
    ("nesting depth 10k", CHAT, b'{"model": "x", "messages": ' + b"[" * 10_000 + b"]" * 10_000
     + b"}", JSON, 400),
    ("not UTF-8", CHAT, b'{"model": "\xff\xfe"}', JSON, 400),
    ("body over the limit", CHAT, json.dumps({**GOOD, "pad": "x" * 70_000}).encode(), JSON,
     413),
    ("content-type not JSON", CHAT, b"model=x", {"content-type": "text/plain"}, 415),
    ("unknown path", "/v1/nonsense", json.dumps(GOOD).encode(), JSON, 404),
    ("unknown model", CHAT, json.dumps({**GOOD, "model": "nope"}).encode(), JSON, 404),
    ("unknown routing strategy", CHAT, json.dumps(GOOD).encode(),
     {**JSON, "x-routing-strategy": "fastest"}, 400),
    # Under Envoy's 60 KiB header limit, so the picker sees it: routed normally.
    ("huge header value", CHAT, json.dumps(GOOD).encode(), {**JSON, "x-junk": "j" * 50_000},
     200),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status"), CASES,
                         ids=[c[0] for c in CASES])
def test_catalogue(fleet: Fleet, name: str, path: str, body: bytes, headers: dict[str, str],
                   status: int) -> None:
    response = loopback().post(f"{fleet.envoy_url}{path}", content=body, headers=headers,
                               timeout=10)
    assert response.status_code == status, response.text[:300]
    if status >= 400:
        error = response.json()["error"]
        assert error["message"] and error["code"]
    assert loopback().get(f"{fleet.admin_url}/health").status_code == 200  # the picker is fine


def test_headers_over_envoys_limit_never_reach_the_picker(fleet: Fleet) -> None:
    try:
        response = loopback().post(f"{fleet.envoy_url}{CHAT}", json=GOOD, timeout=10,
                                   headers={"x-junk": "j" * 70_000})
        assert response.status_code == 431
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass  # Envoy's HTTP/1 codec may close or reset the connection instead of a 431
    assert loopback().get(f"{fleet.admin_url}/health").status_code == 200


def test_client_destination_header_is_removed_and_the_picker_routes(fleet: Fleet) -> None:
    sim_a = fleet.sims["a"].port
    served = {
        loopback().post(f"{fleet.envoy_url}{CHAT}", json=GOOD, timeout=10, headers={
            "x-gateway-destination-endpoint": f"127.0.0.1:{sim_a}"}).headers[SIM_HEADER]
        for _ in range(4)
    }
    assert served == {"a", "b"}


def test_chunked_body_split_everywhere_still_routes(fleet: Fleet) -> None:
    raw = json.dumps(GOOD).encode()
    for size in (1, 3, 7, len(raw) - 1):
        chunks = (raw[i:i + size] for i in range(0, len(raw), size))
        response = loopback().post(f"{fleet.envoy_url}{CHAT}", content=chunks, headers=JSON,
                                   timeout=10)
        assert response.status_code == 200, size
