"""llm_picker.envoy_config (`llm-picker envoy-config`): the settings an Envoy bootstrap must
share with the picker (item 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_picker.envoy_config import ext_proc_config, parse_address, render_bootstrap
from picker.config import load_config
from picker.grpc_route.engines import ENGINES
from tests.unit.test_control_headers import all_bootstraps


@pytest.mark.parametrize(("text", "address"), [
    (":10000", ("127.0.0.1", 10000)), ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:9000", ("::1", 9000)),
])
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["10000", ":0", ":70000", "host:", "host:x"])
def test_bad_address(text: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        parse_address(text)


def _picker_cluster(bootstrap: dict[str, object]) -> dict[str, object]:
    clusters = bootstrap["static_resources"]["clusters"]  # type: ignore[index]
    return next(c for c in clusters if c["name"] == "llm_picker")  # type: ignore[no-any-return]


def test_tls_picks_the_mtls_template(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    config = load_config(overrides={"extproc.tls": {"cert_file": str(tmp_path / "c.pem"),
                                                    "key_file": str(tmp_path / "k.pem")},
                                    "extproc.host": "0.0.0.0", "extproc.port": 7000})
    text = render_bootstrap(config, tls_dir="/srv/tls/", body_mode="FULL_DUPLEX_STREAMED")
    cluster = _picker_cluster(yaml.safe_load(text))
    assert "/srv/tls/ca.pem" in text and "/etc/llm-picker" not in text
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"  # type: ignore[index]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]  # type: ignore[index]
    assert address["endpoint"]["address"]["socket_address"] == {  # a wildcard bind: loopback
        "address": "127.0.0.1", "port_value": 7000}
    assert "request_body_mode: FULL_DUPLEX_STREAMED" in text


def test_authz_mode_with_tls_connects_both_picker_ports_over_it(tmp_path: Path) -> None:
    """`envoy-config --mode authz` for a picker serving extproc.tls: the check server's cluster
    (HTTP/1.1) and each process's access-log cluster (HTTP/2) present Envoy's certificate."""
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    config = load_config(overrides={"extproc.tls": {"cert_file": str(tmp_path / "c.pem"),
                                                    "key_file": str(tmp_path / "k.pem")}})
    text = render_bootstrap(config, tls_dir="/srv/tls", authz_port=9004, processes=2)
    clusters = {c["name"]: c for c in yaml.safe_load(text)["static_resources"]["clusters"]}
    alpn = {name: cluster["transport_socket"]["typed_config"]["common_tls_context"]
            for name, cluster in clusters.items() if name.startswith("llm_picker")}
    assert {name: tls["alpn_protocols"] for name, tls in alpn.items()} == {
        "llm_picker": ["h2"], "llm_picker_1": ["h2"], "llm_picker_authz": ["http/1.1"]}
    assert alpn["llm_picker_authz"]["tls_certificates"][0]["certificate_chain"] == {
        "filename": "/srv/tls/envoy-client.pem"}
    assert "transport_socket" not in clusters["llm_workers"]
    with pytest.raises(ValueError, match="not self_signed"):
        render_bootstrap(load_config(overrides={"extproc.tls": "self_signed"}), authz_port=9004)


def test_a_picker_on_any_free_port_cannot_be_rendered_for() -> None:
    with pytest.raises(ValueError, match="extproc.port: 0 lets serve take any free port"):
        render_bootstrap(load_config(overrides={"extproc.port": 0}))


def test_plain_config_has_no_tls() -> None:
    assert "transport_socket" not in _picker_cluster(
        yaml.safe_load(render_bootstrap(load_config())))


def test_self_signed_picker_gets_the_gateway_configuration() -> None:
    """Both bodies FULL_DUPLEX_STREAMED without asking, as gateways configure it; the plain
    template stays BUFFERED."""
    config = load_config(overrides={"extproc.tls": "self_signed", "extproc.port": 7001})
    text = render_bootstrap(config)
    assert "request_body_mode: FULL_DUPLEX_STREAMED" in text
    assert "request_body_mode: BUFFERED" in render_bootstrap(load_config())
    cluster = _picker_cluster(yaml.safe_load(text))
    tls = cluster["transport_socket"]["typed_config"]  # type: ignore[index]
    assert "validation_context" not in tls["common_tls_context"]  # it cannot verify a self-sign
    assert "response_body_mode: FULL_DUPLEX_STREAMED" in text
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]  # type: ignore[index]
    assert address["endpoint"]["address"]["socket_address"]["port_value"] == 7001


def test_workers_list_every_process_port() -> None:
    """`serve --workers 3` listens on extproc.port + i: Envoy's cluster must list all three."""
    config = load_config(overrides={"extproc.port": 7100})
    cluster = _picker_cluster(yaml.safe_load(render_bootstrap(config, processes=3)))
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]  # type: ignore[index]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"]
            for e in endpoints] == [7100, 7101, 7102]


def _ext_proc_timeout(text: str) -> str:
    manager = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]
    http_filters = manager["filters"][0]["typed_config"]["http_filters"]
    configs = [ext_proc_config(f) for f in http_filters]
    return str(next(c for c in configs if c is not None)["message_timeout"])


@pytest.mark.parametrize(("overrides", "timeout"), [
    ({}, "5s"),  # nothing waits: the template's own
    ({"limits": {"max_concurrent_requests": 4, "queue_size": 8, "queue_timeout_secs": 30}},
     "31s"),
    ({"limits": {"max_concurrent_requests": 4, "queue_timeout_secs": 30}}, "5s"),  # no queue
    ({"prefix": {"enabled": True, "tokenizer": {
        "kind": "remote", "endpoint": "http://t:1", "timeout_secs": 3, "retries": 2}}},
     "10s"),
    ({"enable_igw": True, "pd": {"prefill_timeout_secs": 20, "max_attempts": 2}}, "41s"),
])
def test_message_timeout_outlasts_the_pickers_waits(overrides: dict[str, object],
                                                    timeout: str) -> None:
    """A queued request used to meet Envoy's 504 after 5 s while the picker would still have
    admitted it within queue_timeout_secs."""
    config = load_config(overrides=overrides)
    assert _ext_proc_timeout(render_bootstrap(config)) == timeout


@pytest.mark.parametrize(("name", "bootstrap"), list(all_bootstraps().items()))
def test_every_bootstrap_closes_quiet_client_connections(name: str,
                                                         bootstrap: dict[str, Any]) -> None:
    """Issue 30 item 3: Envoy's defaults keep a half-open connection for an hour."""
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    settings = manager["typed_config"]
    assert settings["request_headers_timeout"] == "10s", name
    assert settings["common_http_protocol_options"]["idle_timeout"] == "30s", name
    assert "stream_idle_timeout" not in settings  # Envoy's 5 minutes: generations run long


def test_grpc_workers_get_an_http2_cluster_and_their_answers_pass_the_picker() -> None:
    """The Generate path goes to an HTTP/2 ORIGINAL_DST cluster beside the HTTP one; with a
    gRPC worker configured, the response body and trailers pass through the picker."""
    plain = yaml.safe_load(render_bootstrap(load_config()))
    clusters = {c["name"]: c for c in plain["static_resources"]["clusters"]}
    grpc = clusters["llm_workers_grpc"]
    assert grpc["type"] == "ORIGINAL_DST"
    options = grpc["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    manager = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    # Each engine's service the picker rewrites requests into (picker.grpc_route.engines).
    assert routes[:len(ENGINES)] == [
        {"match": {"prefix": engine.generate_path.rsplit("/", 1)[0] + "/"},
         "route": {"cluster": "llm_workers_grpc", "timeout": "600s"}}
        for engine in ENGINES.values()]
    assert "response_body_mode: NONE" in render_bootstrap(load_config())
    with_grpc = load_config(overrides={"workers": [{
        "url": "grpc://127.0.0.1:30000", "connection_mode": "grpc", "models": ["m"],
        "tokenizer_path": "/models/m"}]})
    text = render_bootstrap(with_grpc)
    assert "response_body_mode: FULL_DUPLEX_STREAMED" in text
    assert "response_trailer_mode: SEND" in text
