"""The admin API over its ASGI app, with real simulated engines on loopback behind it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from picker.admin.api import MAX_BODY_BYTES, create_admin_app
from picker.config import AdminConfig, ExtprocConfig, PickerConfig
from picker.fleet.served_models import DiscoverySettings
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import CONTENT_TYPE
from picker.routing.admission import LimitSettings
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime
from tests.sim_thread import running_sim

FAST = DiscoverySettings(attempt_timeout_secs=0.5, backoff_initial_secs=0.01,
                         backoff_max_secs=0.02)
TOKEN = "admin-secret-token"


class Admin:
    def __init__(self, token: str | None = None, *specs: WorkerSpec,
                 limits: LimitSettings | None = None,
                 discovery: DiscoverySettings = FAST, keys: bool = False,
                 read_token: str | None = None) -> None:
        """`keys`: accept worker api_keys without mutual TLS on ext_proc."""
        # Not started: the tests drive the admin app, and start the worker manager only.
        self.runtime = PickerRuntime(PickerConfig(
            workers=list(specs), policy="least_load", discovery=discovery,
            limits=limits or LimitSettings(),
            extproc=ExtprocConfig(allow_unauthenticated_keys=keys)))
        self.registry, self.manager = self.runtime.registry, self.runtime.manager
        app = create_admin_app(self.runtime, SecretStr(token) if token else None,
                               SecretStr(read_token) if read_token else None)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url="http://admin", headers=headers)


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    a = Admin()
    await a.manager.start()
    yield a
    await a.client.aclose()
    await a.manager.stop()


async def test_head_probes_get_the_gets_status_without_a_body(admin: Admin) -> None:
    health = await admin.client.head("/health")
    assert health.status_code == 200 and health.content == b""
    assert (await admin.client.head("/ready")).status_code == 503  # no worker yet
    admin.registry.add(WorkerSpec(url="a:1", models=["m"]))
    assert (await admin.client.head("/ready")).status_code == 200


async def test_health_is_liveness_only(admin: Admin) -> None:
    response = await admin.client.get("/health")
    assert response.status_code == 200
    # No limit configured: null, not a 0 that reads as "no request allowed".
    assert response.json() == {"status": "healthy", "active_requests": 0,
                               "max_concurrent_requests": None}
    admin.registry.add(WorkerSpec(url="a:1", models=["m"]))
    lease = admin.runtime.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT))
    assert (await admin.client.get("/health")).json()["active_requests"] == 1
    lease.release("completed")
    await admin.runtime.stop()  # drains
    draining = await admin.client.get("/health")
    assert draining.status_code == 200 and draining.json()["status"] == "unhealthy"


@pytest.mark.parametrize(
    ("states", "draining", "status", "body_status", "routable"),
    [
        ((), False, 503, "not_ready", 0),  # no worker at all
        (("unhealthy",), False, 503, "not_ready", 0),
        (("draining",), False, 503, "not_ready", 0),
        (("unhealthy", "draining"), False, 503, "not_ready", 0),
        (("ok",), False, 200, "ready", 1),
        (("unhealthy", "ok", "draining"), False, 200, "ready", 1),
        (("ok", "ok"), True, 503, "draining", 2),  # shutting down: stop sending traffic
    ],
)
async def test_ready_needs_a_routable_worker(
    admin: Admin, states: tuple[str, ...], draining: bool, status: int, body_status: str,
    routable: int,
) -> None:
    for i, state in enumerate(states):
        worker = admin.registry.add(WorkerSpec(url=f"a:{i + 1}", models=["m"]))
        admin.registry.set_healthy(worker, state != "unhealthy")
        if state == "draining":
            admin.registry.set_draining(worker)
    if draining:
        await admin.runtime.stop()
    response = await admin.client.get("/ready")
    assert response.status_code == status
    assert response.json() == {"status": body_status, "routable_workers": routable,
                               "total_workers": len(states)}


async def test_ready_follows_the_registry(admin: Admin) -> None:
    assert (await admin.client.get("/ready")).status_code == 503
    worker = admin.registry.add(WorkerSpec(url="a:1", models=["m"]))
    assert (await admin.client.get("/ready")).status_code == 200
    admin.registry.set_healthy(worker, False)
    assert (await admin.client.get("/ready")).status_code == 503
    admin.registry.set_healthy(worker, True)
    assert (await admin.client.get("/ready")).status_code == 200
    admin.registry.remove(worker.url)
    assert (await admin.client.get("/ready")).status_code == 503


async def test_metrics_content_type_and_content(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    admin.runtime.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT)).release("completed")
    response = await admin.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"llm_picker_requests", "llm_picker_decisions", "llm_picker_worker_in_flight",
            "llm_picker_worker_healthy", "llm_picker_decision_duration_seconds"} <= set(families)
    completed = [s for s in families["llm_picker_requests"].samples
                 if s.name == "llm_picker_requests_total"]
    assert [(s.labels, s.value) for s in completed] == [({"outcome": "completed"}, 1.0)]


async def test_probes_and_metrics_need_no_token() -> None:
    admin = Admin(TOKEN, WorkerSpec(url="a:1", models=["m"]))
    anonymous = httpx.AsyncClient(transport=admin.client._transport, base_url="http://admin")
    for path in ("/health", "/ready", "/metrics"):
        assert (await anonymous.get(path)).status_code == 200
    await anonymous.aclose()
    await admin.client.aclose()


async def test_unknown_path_and_method_use_the_error_shape(admin: Admin) -> None:
    missing = await admin.client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await admin.client.post("/health")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_a_keyed_worker_is_refused_while_ext_proc_clients_are_not_authenticated(
        admin: Admin) -> None:
    response = await admin.client.post("/workers", json={"url": "a:1", "api_key": "sk-w"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "api_key" and "extproc.tls" in error["message"]
    assert "client_ca_file" in error["message"] and "sk-w" not in response.text
    assert admin.registry.workers() == ()


async def test_register_with_discovery_then_conflict() -> None:
    admin = Admin(keys=True)
    await admin.manager.start()
    with running_sim(model="discovered-model") as url:
        response = await admin.client.post("/workers", json={"url": url, "api_key": "sk-w"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["models"] == ["discovered-model"]
        assert body["model_id"] == "discovered-model"
        assert body["state"]["healthy"] is True and "api_key" not in body
        again = await admin.client.post("/workers", json={"url": url})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "conflict"
    await admin.client.aclose()
    await admin.manager.stop()


async def test_unreachable_worker_is_503_after_its_attempts(admin: Admin) -> None:
    response = await admin.client.post(
        "/workers", json={"url": "http://127.0.0.1:1", "max_connection_attempts": 2}
    )
    assert response.status_code == 503
    assert "2 attempts" in response.json()["error"]["message"]
    assert (await admin.client.get("/workers")).json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"url": "a:1", "priority": -1}, 422, "priority"),
        ({"url": "a:1", "nope": 1}, 422, "nope"),
        ({}, 422, "url"),
    ],
)
async def test_invalid_bodies_name_the_field(
    admin: Admin, body: dict[str, object], status: int, field: str
) -> None:
    response = await admin.client.post("/workers", json=body)
    assert response.status_code == status
    assert response.json()["error"]["field"] == field


async def test_malformed_json_is_400_saying_where(admin: Admin) -> None:
    response = await admin.client.post("/workers", content=b"{oops",
                                       headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert "at character 1" in response.json()["error"]["message"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(("body", "message"), [
    (b"", "a JSON object body is required"),
    (b"[]", "body must be a JSON object, not an array"),
    (b'"url"', "body must be a JSON object, not a string"),
    (b"null", "body must be a JSON object, not null"),
    (b"7", "body must be a JSON object, not a number"),
])
async def test_a_body_that_is_not_an_object_is_named(
        admin: Admin, method: str, body: bytes, message: str) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    response = await admin.client.request(
        method, "/workers" + ("/a" if method == "PATCH" else ""), content=body,
        headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {"code": "invalid_field", "message": message,
                                        "field": "body"}


@pytest.mark.parametrize("field", ["priority", "cost", "labels", "health"])
async def test_patch_with_null_is_422_naming_the_field(admin: Admin, field: str) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    response = await admin.client.patch("/workers/a", json={field: None})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field and "cannot be null" in error["message"]
    assert admin.registry.get("a").spec.priority == 50  # type: ignore[union-attr]
    typo = await admin.client.patch("/workers/a", json={"prioriti": None})
    assert typo.status_code == 422 and typo.json()["error"]["field"] == "prioriti"
    assert "cannot be null" not in typo.json()["error"]["message"]


async def test_get_list_filters_and_unknown(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    admin.registry.add(WorkerSpec(url="b:1", id="b", models=["n"], worker_type="prefill"))
    listing = (await admin.client.get("/workers", params={"model": "m"})).json()
    assert [w["id"] for w in listing["workers"]] == ["a"]
    assert listing["stats"]["total_workers"] == 2
    prefill = (await admin.client.get("/workers", params={"worker_type": "prefill"})).json()
    assert [w["id"] for w in prefill["workers"]] == ["b"]
    one = (await admin.client.get(f"/workers/{quote('http://a:1', safe='')}")).json()
    assert one["id"] == "a" and one["state"]["circuit"]["state"] == "closed"
    assert (await admin.client.get("/workers/b")).json()["url"] == "http://b:1"
    missing = await admin.client.get("/workers/http%3A%2F%2Fz%3A9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_worker"


async def test_patch_is_visible_in_the_next_decision(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    admin.registry.add(WorkerSpec(url="b:1", id="b", models=["m"]))
    response = await admin.client.patch("/workers/b", json={"priority": 99, "labels": {"z": "1"}})
    assert response.status_code == 200 and response.json()["priority"] == 99
    request = RoutingRequest(model="m", api=Api.CHAT)
    picks = set()
    for _ in range(10):
        lease = admin.runtime.routing.route_sync(request)
        picks.add(lease.worker.id)
        lease.release("completed")
    assert picks == {"b"}  # equal load: least_load prefers the higher priority
    bad = await admin.client.patch("/workers/b", json={"url": "http://x:1"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "url"


@pytest.mark.parametrize("key", ["x", "http://127.0.0.1:1"])
async def test_a_data_parallel_worker_is_deleted_by_what_it_was_posted_as(
        admin: Admin, key: str) -> None:
    """POSTed with dp_size 3 it became x@0, x@1, x@2: its own id or url deletes every rank."""
    posted = await admin.client.post("/workers", json={
        "url": "http://127.0.0.1:1", "id": "x", "models": ["m"], "dp_size": 3})
    assert posted.status_code in (201, 202)
    assert sorted(w.id for w in admin.registry.workers()) == ["x@0", "x@1", "x@2"]
    deleted = await admin.client.delete(f"/workers/{key}", params={"drain_timeout_secs": 0})
    assert deleted.status_code == 200, deleted.text
    assert [r["id"] for r in deleted.json()["ranks"]] == ["x@0", "x@1", "x@2"]
    assert deleted.json()["drained"] is True and not admin.registry.workers()
    assert (await admin.client.delete("/workers/x")).status_code == 404


async def test_delete_drains_then_removes(admin: Admin) -> None:
    worker = admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    lease = admin.runtime.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT))
    timed_out = await admin.client.delete("/workers/a", params={"drain_timeout_secs": 0.1})
    assert timed_out.json()["drained"] is False
    assert admin.registry.get("a") is None
    lease.release("completed")
    assert worker.in_flight == 0
    assert (await admin.client.delete("/workers/a")).status_code == 404


async def test_token_required_for_mutations_only() -> None:
    admin = Admin(TOKEN)
    anonymous = httpx.AsyncClient(transport=admin.client._transport, base_url="http://admin")
    assert (await anonymous.get("/workers")).status_code == 200
    assert (await anonymous.post("/workers", json={"url": "a:1"})).status_code == 401
    wrong = await anonymous.delete("/workers/a", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    assert (await admin.client.delete("/workers/a")).status_code == 404  # authorised, unknown


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "http://user:pa55word@h:99999"}, "url"),
    ({"url": "http://user:pa55word@h:1@99999"}, "url"),
    ({"url": "a:1", "id": "w\r0"}, "id"),
    ({"url": "a:1", "id": "../w0"}, "id"),
    ({"url": "a:1@99999"}, "url"),
])
async def test_bad_urls_and_ids_are_422s_naming_the_field_without_credentials(
        admin: Admin, body: dict[str, str], field: str) -> None:
    response = await admin.client.post("/workers", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert "pa55word" not in response.text and "\r" not in response.json()["error"]["message"]
    lookup = await admin.client.get("/workers/http://user:pa55word@h:1")
    assert lookup.status_code == 404 and "pa55word" not in lookup.text


READ_TOKEN = "admin-read-token-6e1"
GUARDED_READS = ["/workers", "/workers/a", "/routers", "/metrics", "/debug/status",
                 "/debug/decisions", "/debug/decisions/r1", "/"]


async def test_reads_need_a_token_once_a_read_token_is_set() -> None:
    admin = Admin(TOKEN, WorkerSpec(url="a:1", id="a", models=["m"]), read_token=READ_TOKEN)
    anonymous = httpx.AsyncClient(transport=admin.client._transport, base_url="http://admin")
    for path in GUARDED_READS:
        refused = await anonymous.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "unauthorized"
        wrong = await anonymous.get(path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403, path
        for accepted in (READ_TOKEN, TOKEN):
            answer = await anonymous.get(path, headers={"authorization": f"Bearer {accepted}"})
            assert answer.status_code in (200, 404), (path, answer.text)  # 404: explain off
            assert answer.status_code != 404 or "explain" in answer.text
    # Probes (kubelet sends no token), the page's static files and the schema stay open.
    for path in ("/health", "/ready", "/status/status.js", "/openapi.json"):
        assert (await anonymous.get(path)).status_code in (200, 503), path
    # The read token reads; it never changes anything.
    reader = {"authorization": f"Bearer {READ_TOKEN}"}
    change = await anonymous.patch("/workers/a", json={"cost": 2}, headers=reader)
    assert change.status_code == 403


async def test_the_status_page_gets_its_token_as_a_cookie() -> None:
    admin = Admin(TOKEN, read_token=READ_TOKEN)
    browser = httpx.AsyncClient(transport=admin.client._transport, base_url="http://admin")
    assert (await browser.get("/?token=nope")).status_code == 403
    assert "llm_picker_read_token" not in browser.cookies
    landing = await browser.get(f"/?token={READ_TOKEN}")
    assert landing.status_code == 303 and landing.headers["location"] == "./"
    cookie = landing.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # What the page's script then fetches (same origin: the cookie goes with it).
    assert (await browser.get("/")).status_code == 200
    assert (await browser.get("/debug/status")).status_code == 200
    # Never for a change: a cross-site form cannot ride on the cookie.
    assert (await browser.post("/workers", json={"url": "b:1"})).status_code == 401


def test_a_read_token_without_a_write_token_is_refused() -> None:
    with pytest.raises(ValueError, match="admin.token"):
        AdminConfig(port=0, read_token=SecretStr("r"))


async def test_secrets_never_appear_in_responses_or_metrics(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"], api_key="sk-TOPSECRET"))
    texts = [
        (await admin.client.get("/workers")).text,
        (await admin.client.get("/workers/a")).text,
        (await admin.client.patch("/workers/a", json={"cost": 2})).text,
        (await admin.client.get("/metrics")).text,
        (await admin.client.get("/openapi.json")).text,
    ]
    assert all("sk-TOPSECRET" not in text for text in texts)


async def test_metrics_show_live_worker_state(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    admin.runtime.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT))
    text = (await admin.client.get("/metrics")).text
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("llm_picker_worker_in_flight", (("worker", "a"),))] == 1


async def test_circuit_state_is_in_metrics(admin: Admin) -> None:
    worker = admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    for _ in range(5):
        admin.registry.record_outcome(worker, False)
    text = (await admin.client.get("/metrics")).text
    assert 'llm_picker_worker_circuit_state{state="open",worker="a"} 1.0' in text
    view = (await admin.client.get("/workers/a")).json()
    assert view["state"]["circuit"]["state"] == "open" and view["state"]["routable"] is False


async def test_health_shows_a_configured_limit() -> None:
    admin = Admin(limits=LimitSettings(max_concurrent_requests=7))
    assert (await admin.client.get("/health")).json()["max_concurrent_requests"] == 7
    await admin.client.aclose()


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "text/plain"])
async def test_a_json_body_is_json_whatever_its_content_type(
    admin: Admin, content_type: str | None
) -> None:
    """`curl -d '{...}'` sends a form content-type; the README's examples must work as written."""
    headers = {"content-type": content_type} if content_type else {}
    with running_sim(model="m") as url:
        response = await admin.client.post("/workers", content=f'{{"url": "{url}"}}'.encode(),
                                           headers=headers)
        assert response.status_code == 201, response.text
        patched = await admin.client.patch(f"/workers/{response.json()['id']}",
                                           content=b'{"priority": 7}', headers=headers)
        assert patched.status_code == 200 and patched.json()["priority"] == 7


@pytest.mark.parametrize("body", [b'{"priority": ' + b"9" * 5000 + b"}",
                                  b'{"labels": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001])
async def test_json_pythons_parser_refuses_is_invalid_json_saying_why(
        admin: Admin, body: bytes) -> None:
    response = await admin.client.post("/workers", content=body,
                                       headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "a number of over 4,300 digits, or nesting too deep" in response.json()["error"][
        "message"]


async def test_a_non_json_body_is_400_saying_so(admin: Admin) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = await admin.client.post("/workers", content=b"url=a:1", headers=form)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_bodies_over_the_limit_are_413_naming_it(admin: Admin, method: str) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    labels = {f"k{i}": "v" * 200 for i in range(400)}
    body = {"labels": labels} if method == "PATCH" else {"url": "b:1", "labels": labels}
    response = await admin.client.request(method, "/workers" + ("/a" if method == "PATCH" else ""),
                                          json=body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "body_too_large" and str(MAX_BODY_BYTES) in error["message"]
    worker = admin.registry.get("a")
    assert worker is not None and worker.spec.labels == {}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({f"k{i}": "v" for i in range(65)}, "at most 64"),
        ({"k" * 64: "v"}, "at most 63"),
        ({"k": "v" * 257}, "at most 256"),
    ],
)
async def test_label_counts_and_sizes_are_bounded(
    admin: Admin, labels: dict[str, str], message: str
) -> None:
    response = await admin.client.post("/workers", json={"url": "a:1", "models": ["m"],
                                                         "labels": labels})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"].startswith("labels") and message in error["message"]
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    patched = await admin.client.patch("/workers/a", json={"labels": labels})
    assert patched.status_code == 422 and message in patched.json()["error"]["message"]


@pytest.mark.parametrize("field", ["url", "models", "id", "dp_size"])
async def test_patch_of_a_fixed_field_says_how_to_change_it(admin: Admin, field: str) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    value: object = {"url": "http://x:1", "models": ["n"], "id": "b", "dp_size": 2}[field]
    response = await admin.client.patch("/workers/a", json={field: value, "priority": 3})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert "cannot be changed" in error["message"]
    assert "DELETE" in error["message"] and "POST" in error["message"]
    assert admin.registry.get("a").spec.priority == 50  # type: ignore[union-attr]


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_unreachable_worker_with_models_registers_at_once_unhealthy(admin: Admin) -> None:
    started = time.monotonic()
    response = await admin.client.post(
        "/workers", json={"url": "http://127.0.0.1:1", "id": "later", "models": ["m"]})
    assert time.monotonic() - started < 2
    assert response.status_code == 202, response.text
    state = response.json()["state"]
    assert state["healthy"] is False and state["routable"] is False
    worker = admin.registry.get("later")
    assert worker is not None and not worker.healthy


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_conflicts_are_checked_before_connecting() -> None:
    slow = Admin(discovery=DiscoverySettings(attempt_timeout_secs=5, backoff_initial_secs=1))
    slow.registry.add(WorkerSpec(url="a:1", id="taken", models=["m"]))
    await slow.manager.start()
    started = time.monotonic()
    same_id = await slow.client.post("/workers", json={"url": "http://127.0.0.1:1", "id": "taken"})
    same_url = await slow.client.post("/workers", json={"url": "a:1", "id": "other"})
    assert time.monotonic() - started < 1
    assert (same_id.status_code, same_url.status_code) == (409, 409)
    assert "taken" in same_id.json()["error"]["message"]
    await slow.client.aclose()
    await slow.manager.stop()


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_an_unreachable_worker_without_models_waits_at_most_max_wait() -> None:
    bounded = Admin(discovery=DiscoverySettings(attempt_timeout_secs=0.2, backoff_initial_secs=0.2,
                                                backoff_max_secs=0.2, max_wait_secs=0.5))
    await bounded.manager.start()
    started = time.monotonic()
    response = await bounded.client.post("/workers", json={"url": "http://127.0.0.1:1"})
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert "0.5 s" in response.json()["error"]["message"]
    await bounded.client.aclose()
    await bounded.manager.stop()


async def test_workers_declared_in_the_file_are_changed_by_the_file_only(admin: Admin) -> None:
    await admin.manager.declare("/etc/picker.yaml", [WorkerSpec(url="a:1", id="a", models=["m"])])
    admin.registry.add(WorkerSpec(url="b:1", id="b", models=["m"]))
    view = (await admin.client.get("/workers/a")).json()
    assert view["declared_in"] == "/etc/picker.yaml"
    for response in (await admin.client.patch("/workers/a", json={"priority": 9}),
                     await admin.client.delete("/workers/a")):
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "declared_in_file"
        assert "/etc/picker.yaml" in error["message"] and "edit" in error["message"]
    worker = admin.registry.get("a")
    assert worker is not None and worker.spec.priority == 50 and not worker.draining
    # A worker the API may change says so, and is changed.
    assert "declared_in" not in (await admin.client.get("/workers/b")).json()
    assert (await admin.client.patch("/workers/b", json={"priority": 9})).status_code == 200
    assert (await admin.client.delete("/workers/b")).status_code == 200


async def test_openapi_documents_the_real_error_shape_and_statuses(admin: Admin) -> None:
    """schemathesis (tests/integration/test_admin_fuzz.py) checks answers against this
    document; here, the parts fuzzing a healthy picker does not reach."""
    document = (await admin.client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    paths = document["paths"]
    for path, method, statuses in [
        ("/workers", "post", {400, 401, 403, 409, 413, 422, 503}),
        ("/workers/{url}", "patch", {400, 401, 403, 404, 409, 413, 422}),
        ("/workers/{url}", "delete", {401, 403, 404, 409, 422}),
        ("/workers/{url}", "get", {404}),
    ]:
        responses = paths[path][method]["responses"]
        for status in statuses:
            assert responses[str(status)]["content"]["application/json"]["schema"] == error
    assert set(paths["/workers"]["post"]["responses"]) >= {"201", "202"}
    ready = paths["/ready"]["get"]["responses"]["503"]["content"]["application/json"]
    assert ready["schema"] == {"$ref": "#/components/schemas/Ready"}
    assert (await admin.client.get("/ready")).status_code == 503  # no worker: documented


@pytest.mark.parametrize(("body", "field", "message"), [
    (b'{"url": "a:1", "models": ["m"], "dp_size": 100000}', "dp_size",
     "less than or equal to 256"),
    (b'{"url": "a:1", "models": ["m"], "cost": 1e999}', "cost", "finite number"),
    (b'{"url": "a:1", "models": ["m"], "priority": true}', "priority", "not a boolean"),
    (b'{"url": "a:1", "models": ["' + b"m" * 257 + b'"]}', "models.0", "at most 256"),
    (b'{"url": "a:1", "id": "' + b"w" * 257 + b'"}', "id", "at most 256"),
    (b'{"url": "a:1", "models": ["m"], "dp_size": 10, "id": "' + b"w" * 255 + b'"}', "id",
     "with dp_size 10 the rank ids (id@rank) would be over 256 characters"),
    (b'{"url": "a:1", "models": ["m"], "health": {"interval_secs": 1e999}}',
     "health.interval_secs", "finite number"),
])
async def test_values_no_worker_could_have_are_422_and_register_nothing(
        admin: Admin, body: bytes, field: str, message: str) -> None:
    response = await admin.client.post("/workers", content=body,
                                       headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and message in error["message"]
    assert not admin.registry.workers()


async def test_patch_and_delete_refuse_infinite_and_nan(admin: Admin) -> None:
    admin.registry.add(WorkerSpec(url="a:1", id="a", models=["m"]))
    patched = await admin.client.patch("/workers/a", content=b'{"cost": 1e999}',
                                       headers={"content-type": "application/json"})
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "cost"
    deleted = await admin.client.delete("/workers/a", params={"drain_timeout_secs": "nan"})
    assert deleted.status_code == 422
    assert deleted.json()["error"]["field"] == "drain_timeout_secs"
    assert admin.registry.get("a") is not None


async def test_a_prefill_worker_without_enable_igw_is_a_422_naming_worker_type(
        admin: Admin) -> None:
    """Without enable_igw there is one router over every worker: a prefill engine would
    answer whole requests alone, a decode engine get requests with no KV to take over."""
    response = await admin.client.post("/workers", json={
        "url": "http://127.0.0.1:9", "models": ["m"], "worker_type": "prefill"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["message"].startswith("worker_type: prefill workers are paired with the other "
                                       "role only with enable_igw: true")
    assert not admin.registry.workers()


async def test_a_worker_view_shows_what_is_set_not_thirty_nulls(admin: Admin) -> None:
    posted = await admin.client.post("/workers", json={
        "url": "http://127.0.0.1:9", "models": ["m"], "id": "plain"})
    listed = (await admin.client.get("/workers")).json()["workers"][0]
    one = (await admin.client.get("/workers/plain")).json()
    for view in (posted.json(), listed, one):
        nulls = [k for k, v in view.items() if v is None]
        assert not nulls, nulls
        assert view["id"] == "plain" and view["models"] == ["m"]
        assert "dp_rank" not in view and "chat_template" not in view
        assert view["state"]["in_flight"] == 0 and "engine" not in view["state"]
        assert view["state"]["prefill_ahead"] == 0
    assert len(listed) <= 16, sorted(listed)


async def test_a_validators_message_comes_without_pydantics_prefix(admin: Admin) -> None:
    response = await admin.client.post("/workers", json={
        "url": "http://127.0.0.1:9", "models": ["m"], "dp_rank": 3, "dp_size": 2})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "dp_rank 3 must be below dp_size 2"
