"""Client-sent control headers through the real Envoy (issue 30 items 5-6, issue 31 item 4).

Every shipped bootstrap with the picker down must never send a request to a host:port the
client named (fail-open used to be an open proxy), and with the picker up no control header a
client sent reaches the engine, in each mode Envoy talks to the picker: ext_proc BUFFERED,
ext_proc FULL_DUPLEX_STREAMED both ways (as gateways configure it), and ext_authz.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from llm_picker.envoy_config import ENVOY_DIR, point_authz
from picker.routing import control_headers
from picker_bench.loopback import loopback
from picker_bench.stack import (
    ENVOY_FAIL_OPEN,
    ENVOY_TEMPLATE,
    free_port,
    local_fleet,
    start_envoy,
)
from tests.http_stub import StubServer
from tests.integration.conftest import MODEL

BOOTSTRAPS = sorted(path.name for path in ENVOY_DIR.glob("*.yaml"))
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def client_headers(victim: StubServer) -> dict[str, str]:
    """A value for every control header: valid where the picker validates it, and a
    destination naming a server the client must not reach."""
    values = {name: f"client-{name}" for name in control_headers.STRIPPED}
    values.update({
        control_headers.DESTINATION: f"127.0.0.1:{victim.port}",
        control_headers.PREFILLER: f"127.0.0.1:{victim.port}",
        control_headers.SUBSET: f"127.0.0.1:{victim.port}",
        control_headers.STRATEGY: "round_robin",
        control_headers.SLO_TTFT: "5000", "x-llm-d-slo-ttft-ms": "5000",
        control_headers.EXPLAIN: "1",
        # A model name (the one requested: a rewrite to another is test_more_apis's).
        control_headers.MODEL_NAME_REWRITE: MODEL, "x-llm-d-model-name-rewrite": MODEL,
    })
    return values


@pytest.fixture
def stubs() -> Iterator[tuple[StubServer, StubServer]]:
    """(the fleet's own engine, the server a client names)."""
    engine, victim = StubServer(), StubServer()
    yield engine, victim
    engine.close()
    victim.close()


def _tls_files(root: Path) -> dict[str, str]:
    ca = trustme.CA()
    client = ca.issue_cert("envoy.local")
    files = {"ca.pem": ca.cert_pem, "envoy-client.pem": client.cert_chain_pems[0],
             "envoy-client.key": client.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(root / name))
    return {name: str(root / name) for name in files}


def _endpoints(port: int) -> list[dict[str, Any]]:
    return [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}]


def with_picker_down(name: str, engine_port: int, root: Path) -> tuple[dict[str, Any], int]:
    """A shipped bootstrap on free ports whose picker address has nothing listening (what
    Envoy sees of a killed picker), its static worker lists (fail-open's fallback, the
    metadata gateway's pool) naming `engine_port`; returns it and its listener port."""
    text = (ENVOY_DIR / name).read_text()
    for file, path in _tls_files(root).items():
        text = text.replace(f"/etc/llm-picker/tls/{file}", path)
    config: dict[str, Any] = yaml.safe_load(text)
    listen = free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = \
        listen
    if name == "envoy-authz.yaml":
        point_authz(config, "127.0.0.1", free_port(), free_port())
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "llm_picker":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = _endpoints(free_port())
        elif cluster["name"] in ("llm_fallback", "llm_pool"):
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = _endpoints(engine_port)
    return config, listen


@pytest.mark.parametrize("bootstrap", BOOTSTRAPS)
def test_picker_down_never_routes_to_a_client_named_host(
        bootstrap: str, stubs: tuple[StubServer, StubServer], tmp_path: Path) -> None:
    """Before the fix, envoy-fail-open.yaml forwarded this request to the victim."""
    engine, victim = stubs
    root = tmp_path
    config, listen = with_picker_down(bootstrap, engine.port, root)
    envoy = start_envoy(config, root)
    try:
        response = loopback().post(f"http://127.0.0.1:{listen}/v1/chat/completions", json=CHAT,
                                   headers=client_headers(victim), timeout=10)
    finally:
        envoy.kill()
    assert victim.posts == []
    if bootstrap == ENVOY_FAIL_OPEN.name:  # the configured default takes it, stripped
        assert response.status_code == 200, response.text
        [(_, received, _)] = engine.posts
        assert not set(control_headers.STRIPPED) & received.keys(), received
    else:  # fail closed: a 503 in OpenAI's JSON shape (was a 500 with an empty message)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert "picker is unavailable" in error["message"]
        assert error["code"] == ("ext_authz_error" if bootstrap == "envoy-authz.yaml"
                                 else "picker_unavailable")


@pytest.mark.parametrize("mode", ["BUFFERED", "FULL_DUPLEX_STREAMED", "authz", "fail-open"])
def test_no_client_control_header_reaches_the_engine(
        mode: str, stubs: tuple[StubServer, StubServer]) -> None:
    """Each control header a client sends is removed or overwritten by the picker's own value
    (x-prefiller-host-port among them: a regular worker, so the picker sets none)."""
    engine, victim = stubs
    worker = {"url": engine.url, "id": "engine", "models": [MODEL]}
    template = ENVOY_FAIL_OPEN if mode == "fail-open" else ENVOY_TEMPLATE
    with local_fleet([], picker_settings={"workers": [worker]}, authz=mode == "authz",
                     body_mode="BUFFERED" if mode == "fail-open" else mode,
                     envoy_template=template) as fleet:
        sent = client_headers(victim)
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=CHAT,
                                   headers=sent, timeout=10)
    assert response.status_code == 200, response.text
    assert victim.posts == []
    [(_, received, _)] = engine.posts
    passed = {name: received[name] for name in sent if received.get(name) == sent[name]}
    assert passed == {}
    assert received[control_headers.DESTINATION] == f"127.0.0.1:{engine.port}"
