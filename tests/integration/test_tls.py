"""TLS and mutual TLS for the ext_proc server (with the real Envoy) and the admin API.

Certificates are made at test time (trustme): a CA, the picker's server certificate for
llm-picker.local, and a client certificate for Envoy."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
import yaml

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb
from picker.config import load_config
from picker.runtime import PickerRuntime
from picker_bench.stack import ENVOY_MTLS, Fleet, SimSpec, free_port, local_fleet
from tests.integration.conftest import MODEL, SIM_HEADER


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = Path(tmp_path_factory.mktemp("pki"))
    ca = trustme.CA()
    server = ca.issue_cert("llm-picker.local", "127.0.0.1")
    client = ca.issue_cert("envoy.local")
    files = {"ca.pem": ca.cert_pem, "server.pem": server.cert_chain_pems[0],
             "server.key": server.private_key_pem, "envoy-client.pem": client.cert_chain_pems[0],
             "envoy-client.key": client.private_key_pem}
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(str(root / name))
        paths[name] = str(root / name)
    return paths


@pytest.fixture(scope="module")
def mtls_fleet(pki: dict[str, str]) -> Iterator[tuple[Fleet, int]]:
    settings = {"extproc": {"tls": {
        "cert_file": pki["server.pem"], "key_file": pki["server.key"],
        "client_ca_file": pki["ca.pem"]}}}
    with local_fleet([SimSpec("a", MODEL)], picker_settings=settings, envoy_template=ENVOY_MTLS,
                     tls_files=pki) as fleet:
        config = yaml.safe_load((fleet.workdir / "picker.yaml").read_text())
        yield fleet, config["extproc"]["port"]


def test_envoy_routes_through_mtls(mtls_fleet: tuple[Fleet, int]) -> None:
    fleet, _ = mtls_fleet
    response = httpx.post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200 and response.headers[SIM_HEADER] == "a"


def _one_stream(channel: grpc.aio.Channel) -> object:
    method = channel.stream_stream(PROCESS_METHOD,
                                   request_serializer=pb.ProcessingRequest.SerializeToString,
                                   response_deserializer=pb.ProcessingResponse.FromString)

    async def call() -> object:
        stream = method()
        request = pb.ProcessingRequest()
        request.request_headers.end_of_stream = True
        await stream.write(request)
        return await asyncio.wait_for(stream.read(), 3)

    return call()


@pytest.mark.parametrize("client_cert", [False, True])
def test_ext_proc_refuses_clients_without_a_certificate(
        mtls_fleet: tuple[Fleet, int], pki: dict[str, str], client_cert: bool) -> None:
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
        # Authenticated: the picker answers (a bodiless request is refused as a bad path).
        assert answer.immediate_response.status.code == 404  # type: ignore[attr-defined]
    else:
        with pytest.raises((grpc.aio.AioRpcError, TimeoutError)):
            asyncio.run(attempt())

    async def plaintext() -> object:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await _one_stream(channel)  # type: ignore[misc]

    with pytest.raises((grpc.aio.AioRpcError, TimeoutError)):
        asyncio.run(plaintext())


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
