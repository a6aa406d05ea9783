"""WorkerSpec: defaults, normalisation, validation errors that name the field, secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from picker.fleet.worker_spec import (
    ConnectionMode,
    HealthOverrides,
    RuntimeType,
    WorkerSpec,
    WorkerType,
    redact_url,
)


def test_defaults() -> None:
    spec = WorkerSpec(url="10.0.0.5:8000")
    assert spec.url == "http://10.0.0.5:8000"
    assert (spec.priority, spec.cost, spec.max_connection_attempts) == (50, 1.0, 20)
    assert spec.worker_type is WorkerType.REGULAR
    assert spec.connection_mode is ConnectionMode.HTTP
    assert spec.runtime_type is RuntimeType.VLLM
    assert spec.models == [] and spec.labels == {}
    assert spec.health == HealthOverrides()
    assert spec.api_key is None and spec.dp_rank is None and spec.dp_base_url is None
    assert spec.bootstrap_host == "10.0.0.5"


def test_default_containers_are_not_shared() -> None:
    first, second = WorkerSpec(url="a:1"), WorkerSpec(url="b:1")
    first.models.append("m")
    first.labels["zone"] = "z"
    assert second.models == [] and second.labels == {}


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("10.0.0.5:8000", "http://10.0.0.5:8000"),  # no scheme: http
        ("http://a:1/", "http://a:1"),  # trailing slash stripped
        ("http://a:1///", "http://a:1"),
        ("  https://a:1/  ", "https://a:1"),  # surrounding blanks
        ("HTTP://Engine-A:8000", "http://engine-a:8000"),  # one spelling per endpoint
        ("http://a", "http://a:80"),  # default port made explicit
        ("https://a", "https://a:443"),
        ("http://a:80", "http://a:80"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("https://[2001:DB8::1]", "https://[2001:db8::1]:443"),
        ("grpc://b:50051", "grpc://b:50051"),
        ("grpcs://b:443", "grpcs://b:443"),
        ("http://h:1@2", "http://h:1@2"),  # one data-parallel rank of an engine
    ],
)
def test_url_normalisation(given: str, url: str) -> None:
    assert WorkerSpec(url=given).url == url


@pytest.mark.parametrize(
    ("first", "second"),
    [("http://a", "http://a:80"), ("HTTP://A:80", "a:80"), ("https://a/", "https://a:443"),
     ("http://[::1]", "[::1]:80")],
)
def test_one_endpoint_has_one_url_and_one_id(first: str, second: str) -> None:
    a, b = WorkerSpec(url=first), WorkerSpec(url=second)
    assert (a.url, a.id, a.host_port) == (b.url, b.id, b.host_port)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a:1",  # bad scheme
        "ws://a:1",
        "http://:80",  # no host
        "http://",
        "http://a:99999",  # bad ports
        "http://a:65536",
        "http://a:0",
        "http://a:-1",
        "http://a:port",
        "grpc://a",  # grpc without a port
        "grpcs://a",
        "http://a:1/v1",  # path, query, fragment, credentials
        "http://a:1?x=1",
        "http://a:1#f",
        "http://user:pw@a:1",
        "http://a b:1",  # hosts that cannot go into a destination header
        "http://-a:1",
        "http://a/b\n:1",
        "",
    ],
)
def test_bad_urls_are_rejected_on_the_url_field(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec(url=url)
    assert caught.value.errors()[0]["loc"] == ("url",)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"priority": -1}, ("priority",)),
        ({"priority": 2**32}, ("priority",)),
        ({"cost": 0}, ("cost",)),
        ({"cost": -1.5}, ("cost",)),
        ({"worker_type": "both"}, ("worker_type",)),
        ({"connection_mode": "udp"}, ("connection_mode",)),
        ({"runtime_type": "tgi"}, ("runtime_type",)),
        ({"bootstrap_port": 0}, ("bootstrap_port",)),
        ({"bootstrap_port": 65536}, ("bootstrap_port",)),
        ({"max_connection_attempts": 0}, ("max_connection_attempts",)),
        ({"max_connection_attempts": 101}, ("max_connection_attempts",)),
        ({"dp_rank": -1}, ("dp_rank",)),
        ({"dp_size": 0}, ("dp_size",)),
        ({"dp_rank": 2, "dp_size": 2}, ("dp_size",)),
        ({"dp_rank": 5, "dp_size": 4}, ("dp_size",)),
        ({"url": "http://h:1@4", "dp_size": 4}, ("dp_size",)),  # rank named by the url
        ({"kv_block_size": 0}, ("kv_block_size",)),
        ({"health": {"interval_secs": 0}}, ("health", "interval_secs")),
        ({"health": {"failure_threshold": 0}}, ("health", "failure_threshold")),
        ({"health": {"bogus": 1}}, ("health", "bogus")),
        ({"modle": ["x"]}, ("modle",)),  # unknown field, named
        ({"models": [" "]}, ("models",)),
        ({"labels": {"zone": 1}}, ("labels", "zone")),
        ({"url": None}, ("url",)),
        ({"url": "http://h:1@99999"}, ("url",)),  # ranks stop below dp_size's limit, 256
        ({"url": "http://h:1@256"}, ("url",)),
        ({"dp_rank": 256}, ("dp_rank",)),
        ({"id": "bad\rid"}, ("id",)),  # a CR breaks Prometheus' text format
        ({"id": "a\nb"}, ("id",)),
        ({"id": "a/b"}, ("id",)),  # and a path separator the admin API's paths
        ({"id": "a\\b"}, ("id",)),
        ({"id": "../x"}, ("id",)),
        ({"id": "a b"}, ("id",)),
        ({"id": "-a"}, ("id",)),
        ({"id": 'a"b'}, ("id",)),
    ],
)
def test_validation_errors_name_the_field(fields: dict[str, object], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec.model_validate({"url": "a:1", **fields})
    assert caught.value.errors()[0]["loc"] == loc


def test_a_bad_id_names_the_characters_allowed() -> None:
    with pytest.raises(ValidationError, match=r"letters, digits and \. _ - : @ \[ \]"):
        WorkerSpec(url="a:1", id="bad\rid")


@pytest.mark.parametrize("worker_id", ["sim-a", "w0", "Engine_7.east", "pod-5f:8000", "e@3",
                                       "[::1]:8000"])
def test_ids_of_every_origin_are_accepted(worker_id: str) -> None:
    """Written ones, derived ones (w-<hash>), DP ranks ({id}@{rank}), pods ({pod}:{port})."""
    assert WorkerSpec(url="a:1", id=worker_id).id == worker_id
    derived = WorkerSpec(url="http://10.0.0.1:8000@3")
    assert derived.id is not None and WorkerSpec(url="b:1", id=derived.id).id == derived.id
    assert WorkerSpec(url="http://h:1@255").dp_rank == 255


@pytest.mark.parametrize("url", ["http://user:s3cret@h:99999", "user:s3cret@h:0",
                                 "http://user:s3cret@h:1@99999", "http://u:s3cret/x@h:-1",
                                 "http://user:s3cret@:1"])
def test_refused_urls_never_echo_their_credentials(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec(url=url)
    message = caught.value.errors()[0]["msg"]
    assert "s3cret" not in message and "user" not in message, message


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw@h:1", "http://***@h:1"),
    ("user:pw@h:1", "***@h:1"),
    ("http://h:1@3", "http://h:1@3"),  # a DP rank is no userinfo
    ("http://user:pw@h:1@3", "http://***@h:1@3"),
    ("http://u:p/w@h", "http://***@h"),
    ("tcp://h:5557", "tcp://h:5557"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_missing_url_names_url() -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec.model_validate({})
    assert caught.value.errors()[0]["loc"] == ("url",)
    assert caught.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize(
    "fields",
    [{"priority": 0}, {"priority": 2**32 - 1}, {"dp_rank": 1, "dp_size": 2}, {"dp_rank": 0},
     {"cost": 0.001}, {"max_connection_attempts": 100}, {"bootstrap_port": 65535}],
)
def test_boundaries_that_are_accepted(fields: dict[str, object]) -> None:
    spec = WorkerSpec.model_validate({"url": "a:1", **fields})
    for name, value in fields.items():
        assert getattr(spec, name) == value


def test_rank_in_url_and_fields_must_agree() -> None:
    spec = WorkerSpec(url="http://h:1@2", dp_size=4)
    assert (spec.dp_rank, spec.dp_base_url, spec.network_url) == (2, "http://h:1", "http://h:1")
    for fields in ({"dp_rank": 1}, {"dp_base_url": "http://other:1"}):
        with pytest.raises(ValidationError):
            WorkerSpec.model_validate({"url": "http://h:1@2", **fields})


def test_api_key_is_accepted_but_never_serialised() -> None:
    spec = WorkerSpec(url="a:1", api_key="sk-secret-123")
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-secret-123"
    dumped = spec.model_dump()
    assert "api_key" not in dumped and "api_key" not in spec.model_dump(mode="json")
    for text in (spec.model_dump_json(), str(dumped), repr(spec), str(spec),
                 spec.model_dump_json(include={"api_key"})):
        assert "sk-secret-123" not in text
    assert "api_key" not in spec.model_dump_json()


def test_updated_keeps_the_write_only_key_and_revalidates() -> None:
    spec = WorkerSpec(url="a:1", api_key="sk-keep", priority=3)
    changed = spec.updated(priority=9)
    assert changed.priority == 9 and changed.api_key == spec.api_key
    assert spec.priority == 3  # a copy, not a mutation
    with pytest.raises(ValidationError):
        spec.updated(priority=-1)


@pytest.mark.parametrize(
    ("url", "bootstrap_host"),
    [("a:1", "a"), ("http://10.1.2.3:8000", "10.1.2.3"), ("[::1]:9", "::1"),
     ("http://h:1@3", "h")],
)
def test_bootstrap_host_is_derived_from_url(url: str, bootstrap_host: str) -> None:
    assert WorkerSpec(url=url).bootstrap_host == bootstrap_host
    assert WorkerSpec(url=url, bootstrap_host="other").bootstrap_host == "other"


def test_id_is_derived_deterministically_from_url() -> None:
    derived = WorkerSpec(url="http://10.0.0.5:8000").id
    assert derived is not None and derived.startswith("w-")
    assert WorkerSpec(url="10.0.0.5:8000/").id == derived
    assert WorkerSpec(url="http://10.0.0.5:8001").id != derived
    assert WorkerSpec(url="https://10.0.0.5:8000").id != derived
    assert WorkerSpec(url="http://10.0.0.5:8000", id="mine").id == "mine"


def test_derived_id_is_stable_across_processes() -> None:
    """Derived from a fixed hash, not Python's per-process salted hash()."""
    import subprocess
    import sys

    code = "from picker.fleet.worker_spec import WorkerSpec; print(WorkerSpec(url='h:1').id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == WorkerSpec(url="h:1").id


@pytest.mark.parametrize(
    ("url", "host_port"),
    [
        ("http://a:81", "a:81"),
        ("http://a", "a:80"),
        ("https://a", "a:443"),
        ("grpcs://a:443", "a:443"),
        ("http://[::1]:9000", "[::1]:9000"),
        ("https://[fe80::1]", "[fe80::1]:443"),
        ("grpc://b:50051", "b:50051"),
        ("http://h:7@3", "h:7"),  # a rank is reached through its engine's base url
    ],
)
def test_host_port_for_the_destination_header(url: str, host_port: str) -> None:
    assert WorkerSpec(url=url).host_port == host_port


def test_round_trip_through_json_is_identity_minus_secret() -> None:
    spec = WorkerSpec(url="a:1", models=["m"], labels={"zone": "z1"}, priority=7, cost=2.5,
                      worker_type="prefill", bootstrap_port=8998, api_key="sk-x")
    again = WorkerSpec.model_validate_json(spec.model_dump_json())
    assert again.api_key is None
    assert again == spec.model_copy(update={"api_key": None})


@pytest.mark.parametrize(
    ("models", "asked", "served"),
    [([], "any", True), ([], "", True), (["a"], "a", True), (["a"], "b", False),
     (["a", "b"], "b", True), (["a"], "A", False)],
)
def test_serves(models: list[str], asked: str, served: bool) -> None:
    assert WorkerSpec(url="a:1", models=models).serves(asked) is served


@pytest.mark.parametrize("key", ["sk-é", "two words", "line\nbreak", ""])
def test_an_api_key_no_header_could_carry_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSpec(url="http://a:1", api_key=key)
    error = caught.value.errors()[0]
    assert error["loc"] == ("api_key",) and "printable ASCII" in error["msg"]
    assert not key or key not in error["msg"]
