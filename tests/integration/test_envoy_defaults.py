"""What a new user meets through the default envoy/envoy.yaml (issue 13, items 11, 13, 14, 15).

Everything runs through the real `envoy` binary and a real `llm-picker serve`: Envoy's own
error replies in OpenAI's JSON shape, `GET /v1/models` answered by the picker, the access log
the picker writes for those requests, and how fast the shipped defaults eject a dead engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, free_port, local_fleet
from tests.integration.conftest import MODEL, wait_until

SECRET = "sk-worker-secret-0123456789"
PROMPT = "a prompt that must never reach a log line"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """One live sim (with an api key), one worker whose port nobody listens on, access log on;
    a 1 s route timeout so a slow request shows Envoy's timeout reply."""
    live, slow, dead = free_port(), free_port(), free_port()
    sims = [SimSpec("live", MODEL, port=live, api_key=SECRET),
            SimSpec("slow", "slow-model", ["--ttft-ms", "3000"], port=slow)]
    workers = [
        {"url": f"http://127.0.0.1:{live}", "id": "live", "models": [MODEL], "api_key": SECRET},
        {"url": f"http://127.0.0.1:{slow}", "id": "slow", "models": ["slow-model"]},
        {"url": f"http://127.0.0.1:{dead}", "id": "dead", "models": ["dead-model"]},
    ]
    settings = {"workers": workers, "log": {"access": True}, "max_body_bytes": 4096,
                "health": {"interval_secs": 30},  # keep the dead worker routable
                # envoy/envoy.yaml's plaintext ext_proc (test_tls.py runs keys over mTLS)
                "extproc": {"allow_unauthenticated_keys": True}}
    with local_fleet(sims, picker_settings=settings, route_timeout="1s") as running:
        yield running


def _chat(model: str, content: str = PROMPT, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _openai_error(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and error["message"] and error["type"], error
    return error


def test_envoy_local_replies_are_openai_json(fleet: Fleet) -> None:
    """Item 14: Envoy's 413 / 503 / 504 used to be plain text ("Payload Too Large", ...)."""
    url = f"{fleet.envoy_url}/v1/chat/completions"
    # The body is over Envoy's buffer (the picker's max_body_bytes is 4096, the template's
    # Envoy buffer 8 MiB: over both, Envoy answers first).
    too_large = loopback().post(url, json=_chat(MODEL, "x" * 9_000_000), timeout=10)
    assert too_large.status_code == 413
    assert _openai_error(too_large)["code"] == "body_too_large"
    unreachable = loopback().post(url, json=_chat("dead-model"), timeout=10)
    assert unreachable.status_code == 503
    assert "connection" in str(_openai_error(unreachable)["message"])
    slow = loopback().post(url, json=_chat("slow-model"), timeout=10)
    assert slow.status_code == 504, slow.text
    assert _openai_error(slow)["type"] == "timeout_error"


def test_picker_replies_keep_their_own_json(fleet: Fleet) -> None:
    """The local-reply mappers must leave the picker's ImmediateResponses untouched."""
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=_chat("nobody"))
    assert response.status_code == 404
    assert _openai_error(response)["code"] == "model_not_found"
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions",
                               json=_chat(MODEL, "x" * 5000))
    assert (response.status_code, _openai_error(response)["code"]) == (413, "body_too_large")
    assert "4096" in str(_openai_error(response)["message"])  # the picker's wording


def test_models_list_through_envoy(fleet: Fleet) -> None:
    """Item 13: `client.models.list()` used to be a 404 (the picker refused the path)."""
    client = openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="unused", max_retries=0)
    assert sorted(model.id for model in client.models.list()) == ["dead-model", MODEL,
                                                                  "slow-model"]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody")
    head = loopback().head(f"{fleet.envoy_url}/v1/models", timeout=5.0)
    assert head.status_code == 200 and head.headers["content-type"] == "application/json"


def test_access_log_one_json_line_per_request(fleet: Fleet) -> None:
    """Item 11: with log.access, one JSON line per request; no prompt text, no api key."""
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=_chat(MODEL),
                               headers={"x-request-id": "req-access-1"})
    assert response.status_code == 200
    loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=_chat("nobody"),
                    headers={"x-request-id": "req-access-2"})
    log_path = fleet.processes["picker"].log_path

    def entries() -> dict[str, dict[str, object]]:
        lines = [json.loads(line) for line in log_path.read_text().splitlines()
                 if line.startswith("{")]
        return {str(line["request_id"]): line for line in lines}

    wait_until(lambda: {"req-access-1", "req-access-2"} <= entries().keys(), what="log lines")
    ok, refused = entries()["req-access-1"], entries()["req-access-2"]
    assert ok.keys() == {"request_id", "model", "policy", "worker", "match", "outcome", "status",
                         "duration_ms"}
    assert (ok["model"], ok["worker"], ok["policy"], ok["outcome"], ok["status"]) == (
        MODEL, "live", "round_robin", "completed", 200)
    assert (refused["worker"], refused["outcome"], refused["status"]) == (None, "rejected", 404)
    text = log_path.read_text()
    assert PROMPT not in text and SECRET not in text


def test_client_values_in_the_access_log_are_capped(fleet: Fleet) -> None:
    """Issue 30 item 14: a 5 KB request id and a 10 KB strategy name were written whole."""
    request_id = "req-long-" + "i" * 5000
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=_chat(MODEL),
                               headers={"x-request-id": request_id,
                                   "x-routing-strategy": "s" * 10_000})
    assert response.status_code == 400  # an unknown strategy
    log_path = fleet.processes["picker"].log_path

    def line() -> str | None:
        return next((text for text in log_path.read_text().splitlines()
                     if text.startswith('{"request_id":"req-long-')), None)

    wait_until(lambda: line() is not None, what="the log line")
    entry = json.loads(str(line()))
    assert entry["request_id"] == request_id[:256] + "...[+4753 chars]"
    assert entry["policy"].endswith("...[+9744 chars]")
    assert len(str(line())) < 1000


def test_default_settings_eject_a_dead_engine_within_seconds() -> None:
    """Item 15: with the shipped health/circuit defaults (no overrides), a killed engine stops
    receiving requests within a few seconds, idle (health checks) or under load (circuit
    breaker); the few failures clients see are JSON 503s. Prints the measured times."""
    sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "5", "--tpot-ms", "1"]) for i in range(3)]
    with local_fleet(sims, policy="round_robin") as fleet, httpx.Client(timeout=10) as client:
        def state(worker_id: str) -> dict[str, object]:
            view = client.get(f"{fleet.admin_url}/workers/{worker_id}").json()
            assert isinstance(view, dict)
            return dict(view["state"])

        # Idle: no request reaches the dead engine; active health checks alone eject it.
        fleet.processes["sim-e2"].kill()
        killed = time.monotonic()
        wait_until(lambda: state("e2")["healthy"] is False, timeout=10.0, what="e2 ejected")
        idle_eject = time.monotonic() - killed
        # Under load (~20 requests/s, round robin): the breaker opens after 3 failures.
        fleet.processes["sim-e1"].kill()
        killed = time.monotonic()
        statuses: list[tuple[float, int]] = []
        while time.monotonic() - killed < 4.0:
            response = client.post(f"{fleet.envoy_url}/v1/chat/completions",
                                   json=_chat(MODEL, "hi", max_tokens=1))
            statuses.append((time.monotonic() - killed, response.status_code))
            if response.status_code != 200:  # a stable code; Envoy's details in the message
                error = response.json()["error"]
                assert (error["type"], error["code"]) == ("service_unavailable_error",
                                                          "engine_unreachable"), error
            time.sleep(0.05)
        failures = [at for at, status in statuses if status != 200]
        print(f"time to eject: idle {idle_eject:.2f}s (health checks); under load "
              f"{len(failures)} failed requests, last at {max(failures, default=0):.2f}s")
        assert idle_eject < 3.5
        assert 1 <= len(failures) <= 3, statuses
        assert max(failures) < 2.0, statuses
        assert state("e1")["routable"] is False
        assert all(status == 200 for at, status in statuses if at > max(failures))
