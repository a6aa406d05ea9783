"""WorkerSpec: defaults, normalisation, validation errors that name the field, secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from picker.workers import ConnectionMode, RuntimeType, WorkerSpec, WorkerType


def test_defaults() -> None:
    spec = WorkerSpec(url="10.0.0.5:8000")
    assert spec.url == "http://10.0.0.5:8000"
    assert (spec.priority, spec.cost, spec.max_connection_attempts) == (50, 1.0, 20)
    assert spec.worker_type is WorkerType.REGULAR
    assert spec.connection_mode is ConnectionMode.HTTP
    assert spec.runtime_type is RuntimeType.VLLM
    assert spec.bootstrap_host == "10.0.0.5"
    assert spec.id == WorkerSpec(url="http://10.0.0.5:8000/").id  # derived from url, stable


@pytest.mark.parametrize(
    ("url", "host_port"),
    [
        ("http://a:81", "a:81"),
        ("http://a", "a:80"),
        ("https://a", "a:443"),
        ("http://[::1]:9000", "[::1]:9000"),
        ("grpc://b:50051", "b:50051"),
    ],
)
def test_host_port_for_the_destination_header(url: str, host_port: str) -> None:
    assert WorkerSpec(url=url).host_port == host_port


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"url": "ftp://a:1"}, ("url",)),
        ({"url": "http://:80"}, ("url",)),
        ({"url": "http://a:99999"}, ("url",)),
        ({"url": "grpc://a"}, ("url",)),
        ({"url": "a:1", "priority": -1}, ("priority",)),
        ({"url": "a:1", "priority": 2**32}, ("priority",)),
        ({"url": "a:1", "cost": 0}, ("cost",)),
        ({"url": "a:1", "worker_type": "both"}, ("worker_type",)),
        ({"url": "a:1", "bootstrap_port": 0}, ("bootstrap_port",)),
        ({"url": "a:1", "max_connection_attempts": 0}, ("max_connection_attempts",)),
        ({"url": "a:1", "health": {"interval_secs": 0}}, ("health", "interval_secs")),
        ({"url": "a:1", "health": {"bogus": 1}}, ("health", "bogus")),
        ({"url": "a:1", "modle": ["x"]}, ("modle",)),
        ({"url": "a:1", "models": [" "]}, ("models",)),
        ({}, ("url",)),
    ],
)
def test_validation_errors_name_the_field(fields: dict[str, object], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec.model_validate(fields)
    assert caught.value.errors()[0]["loc"] == loc


def test_dp_rank_must_be_below_dp_size() -> None:
    with pytest.raises(ValidationError, match="dp_rank 2 must be below dp_size 2"):
        WorkerSpec(url="a:1", dp_rank=2, dp_size=2)


def test_api_key_is_accepted_but_never_serialised() -> None:
    spec = WorkerSpec(url="a:1", api_key="sk-secret-123")
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-secret-123"
    for text in (spec.model_dump_json(), str(spec.model_dump()), repr(spec), str(spec)):
        assert "sk-secret-123" not in text
    assert "api_key" not in spec.model_dump()


def test_round_trip_through_json_is_identity_minus_secret() -> None:
    spec = WorkerSpec(url="a:1", models=["m"], labels={"zone": "z1"}, priority=7, cost=2.5,
                      worker_type="prefill", bootstrap_port=8998)
    assert WorkerSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(("models", "asked", "served"),
                         [([], "any", True), (["a"], "a", True), (["a"], "b", False)])
def test_serves(models: list[str], asked: str, served: bool) -> None:
    assert WorkerSpec(url="a:1", models=models).serves(asked) is served
