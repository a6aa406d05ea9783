"""TLS and mutual TLS for the ext_proc server (with the real Envoy) and the admin API.

Certificates are made at test time (trustme): a CA, the picker's server certificate for
llm-picker.local, and a client certificate for Envoy."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb
from picker.config import load_config
from picker.runtime import PickerRuntime
from picker_bench.stack import (
    ENVOY_MTLS,
    Fleet,
    SimSpec,
    free_port,
    local_fleet,
    spawn,
    wait_http,
)
from tests.integration.conftest import (
    MODEL,
    SIM_HEADER,
    mtls_settings,
    total_in_flight,
    wait_until,
)
from tests.unit.test_extproc_stream import body_msg, headers_msg, set_headers

KEY = "sk-only-for-envoy-5b7e"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def mtls_fleet(pki: dict[str, str]) -> Iterator[tuple[Fleet, int]]:
    """One sim that needs its api_key (mutual TLS is what lets the picker hold it)."""
    with local_fleet([SimSpec("a", MODEL, api_key=KEY)], picker_settings=mtls_settings(pki),
                     envoy_template=ENVOY_MTLS, tls_files=pki) as fleet:
        config = yaml.safe_load((fleet.workdir / "picker.yaml").read_text())
        yield fleet, config["extproc"]["port"]


def test_envoy_routes_through_mtls(mtls_fleet: tuple[Fleet, int]) -> None:
    fleet, _ = mtls_fleet
    response = httpx.post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200 and response.headers[SIM_HEADER] == "a"
    assert "(mutual TLS), admin on " in fleet.processes["picker"].log_path.read_text()


def _one_stream(channel: grpc.aio.Channel) -> object:
    """A chat request's headers and body (BUFFERED) on one ext_proc stream; the answer to
    the body, which carries the routing header mutation."""
    method = channel.stream_stream(PROCESS_METHOD,
                                   request_serializer=pb.ProcessingRequest.SerializeToString,
                                   response_deserializer=pb.ProcessingResponse.FromString)

    async def call() -> object:
        stream = method()
        await stream.write(headers_msg(duplex=False))
        await stream.write(body_msg(BODY, True))
        await asyncio.wait_for(stream.read(), 3)  # the headers' answer: continue
        return await asyncio.wait_for(stream.read(), 3)

    return call()


@pytest.mark.parametrize("client_cert", [False, True])
def test_worker_keys_go_only_to_a_client_with_a_certificate(
        mtls_fleet: tuple[Fleet, int], pki: dict[str, str], client_cert: bool) -> None:
    """A raw gRPC client on the ext_proc port: without Envoy's client certificate (over TLS,
    or plaintext) it completes no stream, so never sees the worker's key."""
    _, port = mtls_fleet
    root = Path(pki["ca.pem"]).read_bytes()
    key = Path(pki["envoy-client.key"]).read_bytes() if client_cert else None
    chain = Path(pki["envoy-client.pem"]).read_bytes() if client_cert else None
    credentials = grpc.ssl_channel_credentials(root, key, chain)

    async def attempt() -> object:
        options = [("grpc.ssl_target_name_override", "llm-picker.local")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                           options=options) as channel:
            return await _one_stream(channel)  # type: ignore[misc]

    if client_cert:
        answer = asyncio.run(attempt())
        # Authenticated: routed to the keyed worker, its key in the header mutation.
        mutation = answer.request_body.response.header_mutation  # type: ignore[attr-defined]
        assert set_headers(mutation)["authorization"] == f"Bearer {KEY}"
    else:
        with pytest.raises((grpc.aio.AioRpcError, TimeoutError)):
            asyncio.run(attempt())

    async def plaintext() -> object:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await _one_stream(channel)  # type: ignore[misc]

    with pytest.raises((grpc.aio.AioRpcError, TimeoutError)):
        asyncio.run(plaintext())


@pytest.mark.parametrize("tls", ["none", "self_signed", "server_only"])
def test_serve_refuses_keyed_workers_without_mutual_tls(
        pki: dict[str, str], tmp_path: Path, tls: str) -> None:
    """`llm-picker serve` exits at start-up, naming the setting, instead of listening."""
    extproc: dict[str, object] = {"port": free_port(), "tls": {
        "none": None, "self_signed": "self_signed",
        "server_only": {"cert_file": pki["server.pem"], "key_file": pki["server.key"]}}[tls]}
    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({"extproc": extproc, "admin": {"port": free_port()}, "workers": [
        {"url": "http://127.0.0.1:1", "models": [MODEL], "api_key": KEY}]}))
    done = subprocess.run([sys.executable, "-m", "llm_picker", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "extproc.tls" in done.stderr and "client_ca_file" in done.stderr
    assert "workers.0.api_key" in done.stderr and KEY not in done.stderr


def test_admin_api_over_tls(pki: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({"admin": {"port": port, "tls": {
        "cert_file": pki["server.pem"], "key_file": pki["server.key"]}}}))
    config = load_config(path)
    runtime = PickerRuntime(config)
    runtime.start_in_thread()
    try:
        trusted = ssl.create_default_context(cafile=pki["ca.pem"])
        response = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=5)
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)  # untrusted without the CA
    finally:
        runtime.stop_thread()


def test_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    from picker.errors import ConfigError

    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({"extproc": {"port": 1, "tls": {
        "cert_file": str(tmp_path / "nope.pem"), "key_file": str(tmp_path / "nope.key")}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "extproc.tls" and "cert_file" in str(caught.value)


def _server_only_tls(pki: dict[str, str]) -> dict[str, object]:
    """TLS that encrypts but asks no client certificate: authenticates nobody."""
    return {"extproc": {"tls": {"cert_file": pki["server.pem"], "key_file": pki["server.key"]}}}


def test_authz_mode_refuses_keyed_workers_without_mutual_tls(
        pki: dict[str, str], tmp_path: Path) -> None:
    """Its check port answers with the key: TLS without client certificates hands it to
    anyone connecting."""
    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({**_server_only_tls(pki), "admin": {"port": free_port()},
                                "workers": [{"url": "http://127.0.0.1:1", "models": [MODEL],
                                             "api_key": KEY}]}))
    done = subprocess.run([sys.executable, "-m", "llm_picker", "serve", "--config", str(path),
                           "--mode", "authz", "--authz-port", str(free_port()),
                           "--extproc-port", str(free_port())],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "workers.0.api_key" in done.stderr and "allow_unauthenticated_keys" in done.stderr


def test_authz_mode_refuses_a_keyed_worker_posted_at_runtime_too(
        pki: dict[str, str], tmp_path: Path) -> None:
    """The admin API judges keys against the port that really serves: in authz mode the check
    port, with TLS that asks for no client certificate here (the gap a review left open)."""
    admin = free_port()
    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({**_server_only_tls(pki), "admin": {"port": admin}}))
    picker = spawn("picker-authz", [sys.executable, "-m", "llm_picker", "serve", "--config",
                                    str(path), "--mode", "authz", "--authz-port",
                                    str(free_port()), "--extproc-port", str(free_port())],
                   tmp_path)
    try:
        wait_http(picker, f"http://127.0.0.1:{admin}/health")
        posted = httpx.post(f"http://127.0.0.1:{admin}/workers", timeout=10, json={
            "url": "http://127.0.0.1:1", "models": [MODEL], "api_key": KEY})
        assert posted.status_code == 422, posted.text
        error = posted.json()["error"]
        assert error["field"] == "api_key" and KEY not in posted.text
    finally:
        picker.stop()


def test_authz_mode_over_mutual_tls_routes_keyed_workers_and_refuses_clients_without_a_cert(
        pki: dict[str, str]) -> None:
    """extproc.tls with a client CA covers both authz-mode ports: Envoy, with its client
    certificate, gets checks answered (the worker's key included) and logs requests' ends; a
    client without the certificate completes no handshake on either port, plaintext or TLS."""
    with local_fleet([SimSpec("a", MODEL, api_key=KEY)], picker_settings=mtls_settings(pki),
                     tls_files=pki, authz=True) as fleet:
        response = httpx.post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10,
                              json={"model": MODEL, "messages": [{"role": "user",
                                                                  "content": "hi"}]})
        assert response.status_code == 200 and response.headers[SIM_HEADER] == "a"
        wait_until(lambda: total_in_flight(fleet) == 0, what="the access log's release")
        started = fleet.processes["picker"].log_path.read_text()
        found = re.search(r"checks on 127.0.0.1:(\d+), access log on 127.0.0.1:(\d+) "
                          r"\(mutual TLS\)", started)
        assert found is not None, started
        check_port, log_port = int(found[1]), int(found[2])
        url = f"https://127.0.0.1:{check_port}/v1/models"
        direct = {"x-llm-picker-direct": "models"}  # answered, not checked (Envoy's route)
        with_cert = ssl.create_default_context(cafile=pki["ca.pem"])
        with_cert.load_cert_chain(pki["envoy-client.pem"], pki["envoy-client.key"])
        assert httpx.get(url, headers=direct, verify=with_cert, timeout=5).status_code == 200
        without_cert = ssl.create_default_context(cafile=pki["ca.pem"])
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, headers=direct, verify=without_cert, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{check_port}/v1/models", headers=direct, timeout=5)

        async def log_channel_ready(certificate: bool) -> bool:
            credentials = grpc.ssl_channel_credentials(
                Path(pki["ca.pem"]).read_bytes(),
                Path(pki["envoy-client.key"]).read_bytes() if certificate else None,
                Path(pki["envoy-client.pem"]).read_bytes() if certificate else None)
            options = [("grpc.ssl_target_name_override", "llm-picker.local")]
            async with grpc.aio.secure_channel(f"127.0.0.1:{log_port}", credentials,
                                               options=options) as channel:
                try:
                    await asyncio.wait_for(channel.channel_ready(), 3)
                except TimeoutError:
                    return False
                return True

        assert asyncio.run(log_channel_ready(True))
        assert not asyncio.run(log_channel_ready(False))


def test_admin_api_with_a_client_ca_refuses_clients_without_a_certificate(
        pki: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "picker.yaml"
    path.write_text(json.dumps({"admin": {"port": port, "tls": {
        "cert_file": pki["server.pem"], "key_file": pki["server.key"],
        "client_ca_file": pki["ca.pem"]}}}))
    runtime = PickerRuntime(load_config(path))
    runtime.start_in_thread()
    try:
        with_cert = ssl.create_default_context(cafile=pki["ca.pem"])
        with_cert.load_cert_chain(pki["envoy-client.pem"], pki["envoy-client.key"])
        url = f"https://127.0.0.1:{port}/health"
        assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200
        trusted = ssl.create_default_context(cafile=pki["ca.pem"])
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=trusted, timeout=5)
    finally:
        runtime.stop_thread()
