"""The admin API's decision records (/debug/decisions), status document (/debug/status) and
status page files, over its ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from picker.admin.api import create_admin_app
from picker.config import PickerConfig
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

TOKEN = "admin-secret-token"
API_KEY = "sk-worker-secret-xyz"
PROMPT = "my private prompt about payroll " * 10


def runtime(explain: bool = True) -> PickerRuntime:
    return PickerRuntime(PickerConfig.model_validate({
        "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"],
                     "api_key": API_KEY} for i in range(2)]
        + [{"url": "10.0.1.1:8000", "id": "x0", "models": ["x"]}],
        "policy": "prefix_cache", "prefix": {"enabled": True},
        "policies": {"weighted": {"scorers": {"prefix": 2, "in_flight": 1}}},
        "explain": {"enabled": explain}}))


def client(r: PickerRuntime, token: str | None = None) -> httpx.AsyncClient:
    app = create_admin_app(r, SecretStr(token) if token else None)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")


def route(r: PickerRuntime, request_id: str, model: str = "m") -> str:
    lease = r.routing.route_sync(RoutingRequest(model=model, api=Api.CHAT, prompt_text=PROMPT,
                                        headers={"x-request-id": request_id}))
    return lease.worker.id


@pytest.fixture
async def admin() -> AsyncIterator[tuple[PickerRuntime, httpx.AsyncClient]]:
    r = runtime()
    async with client(r, TOKEN) as c:  # a token guards writes; reads stay open
        yield r, c


async def test_decisions_newest_first_filtered_and_by_id(
        admin: tuple[PickerRuntime, httpx.AsyncClient]) -> None:
    r, c = admin
    winners = [route(r, f"req-{i}") for i in range(5)]
    route(r, "other-model", model="x")
    reply = await c.get("/debug/decisions", params={"limit": 3})
    assert reply.status_code == 200
    body = reply.json()
    assert [d["request_id"] for d in body["decisions"]] == ["other-model", "req-4", "req-3"]
    assert body["capacity"] == 1000
    only_m = (await c.get("/debug/decisions", params={"model": "m"})).json()["decisions"]
    assert [d["request_id"] for d in only_m] == [f"req-{i}" for i in range(4, -1, -1)]
    on_w = (await c.get("/debug/decisions", params={"worker": winners[4]})).json()["decisions"]
    assert on_w and all(d["worker"] == winners[4] for d in on_w)
    one = (await c.get("/debug/decisions/req-4")).json()
    assert one["worker"] == winners[4] and one["policy"] == "prefix_cache"
    assert one["reason"] == "best-prefix" and one["match"] == 1.0
    assert {"worker": "x0", "reason": "other_model"} in one["excluded"]
    missing = await c.get("/debug/decisions/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_decision"
    bad = await c.get("/debug/decisions", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "limit"


async def test_decisions_say_when_explain_is_off() -> None:
    r = runtime(explain=False)
    async with client(r) as c:
        route(r, "r1")
        for path in ("/debug/decisions", "/debug/decisions/r1"):
            reply = await c.get(path)
            assert reply.status_code == 404
            assert reply.json()["error"]["code"] == "explain_disabled"
        status = (await c.get("/debug/status")).json()
        assert status["explain"]["enabled"] is False and status["decisions"] == []


async def test_status_document_and_page_need_no_token_and_leak_nothing(
        admin: tuple[PickerRuntime, httpx.AsyncClient]) -> None:
    r, c = admin
    route(r, "r1")
    r.history.sample()
    route(r, "r2")
    r.history.sample()
    reply = await c.get("/debug/status")
    assert reply.status_code == 200
    status = reply.json()
    assert [w["id"] for w in status["workers"]] == ["w0", "w1", "x0"]
    assert status["policy"] == "prefix_cache"
    assert set(status["policies"]) == {"prefix_cache", "weighted"}
    assert status["policies"]["weighted"]["scorers"] == {"prefix": 2, "in_flight": 1}
    assert [d["request_id"] for d in status["decisions"]] == ["r2", "r1"]
    history = status["history"]["workers"]
    winner = status["decisions"][0]["worker"]
    assert len(history[winner]["rate"]) == 1 and history[winner]["rate"][0] > 0
    assert history[winner]["hit_rate"] == [1.0]  # r2 found r1's prompt there
    assert history["x0"]["hit_rate"] == [None]
    for text in (reply.text, (await c.get("/debug/decisions")).text):
        assert API_KEY not in text and "payroll" not in text and TOKEN not in text
    page = await c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="status/status.js"' in page.text
    script = await c.get("/status/status.js")
    assert script.status_code == 200 and "debug/status" in script.text
    assert (await c.get("/status/status.css")).status_code == 200
    assert (await c.get("/status/../admin.py")).status_code == 404
    assert (await c.get("/status/secret.txt")).status_code == 404


async def test_status_routes_are_documented() -> None:
    async with client(runtime()) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert {"/debug/status", "/debug/decisions", "/debug/decisions/{request_id}"} <= set(paths)
    assert "/" not in paths  # the page is HTML, not part of the API


async def test_the_page_arrives_with_its_first_status_and_nothing_can_close_its_tag() -> None:
    """The first paint shows workers: the status rides in the page, not after a poll."""
    import json
    import re

    r = runtime()
    r.registry.add(r.registry.get("x0").spec.updated(  # type: ignore[union-attr]
        url="10.0.2.1:8000", id="x1", models=["</script><script>alert(1)</script>"]))
    async with client(r) as c:
        page = (await c.get("/")).text
    block = re.search(r'<script id="first-status" type="application/json">(.*?)</script>',
                      page, re.S)
    assert block is not None and page.index(block.group(0)) < page.index("status/status.js")
    assert "</script><script>" not in block.group(1)  # `<` escaped inside the JSON
    status = json.loads(block.group(1))
    assert [w["id"] for w in status["workers"]] == ["w0", "w1", "x0", "x1"]
    assert status["workers"][3]["models"] == ["</script><script>alert(1)</script>"]
    assert API_KEY not in page
