"""load_config: file < env < flags, and every mistake named by its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.config import load_config
from picker.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "picker.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config()
    assert (config.extproc.port, config.admin.port) == (9002, 9003)
    assert config.extproc.host == config.admin.host == "127.0.0.1"
    assert config.extproc.tls is None and config.admin.token is None
    assert (config.policy.name, config.policy.params) == ("round_robin", {})
    assert config.max_body_bytes == 8 * 1024 * 1024
    assert config.workers == []
    assert config.prefix.enabled is False


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == load_config()


def test_yaml_file_is_parsed_into_every_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
extproc:
  host: 0.0.0.0
  port: 9102
admin: {port: 9103}
policy:
  name: power_of_two
  params: {seed: 7}
max_body_bytes: 1024
health: {interval_secs: 2.5}
enable_igw: true
workers:
  - url: 10.0.0.1:8000
    id: engine-a
    models: [llama, qwen]
    priority: 70
    cost: 0.5
    worker_type: prefill
    bootstrap_port: 8998
    labels: {zone: eu}
  - url: https://engine-b.internal
"""))
    assert (config.extproc.host, config.extproc.port, config.admin.port) == ("0.0.0.0", 9102, 9103)
    assert (config.policy.name, config.policy.params) == ("power_of_two", {"seed": 7})
    assert config.max_body_bytes == 1024 and config.health.interval_secs == 2.5
    first, second = config.workers
    assert (first.url, first.id, first.models) == ("http://10.0.0.1:8000", "engine-a",
                                                    ["llama", "qwen"])
    assert (first.priority, first.cost, first.worker_type.value) == (70, 0.5, "prefill")
    assert (first.bootstrap_port, first.labels) == (8998, {"zone": "eu"})
    assert second.url == "https://engine-b.internal:443" and second.priority == 50


@pytest.mark.parametrize(
    ("text", "name", "params"),
    [
        ("policy: least_load\n", "least_load", {}),
        ("policy: {name: least_load}\n", "least_load", {}),
        ("policy: {name: random, params: {seed: 2}}\n", "random", {"seed": 2}),
        ("policy: {params: {}}\n", "round_robin", {}),
    ],
)
def test_policy_shorthand_and_long_form(tmp_path: Path, text: str, name: str,
                                        params: dict[str, object]) -> None:
    config = load_config(write(tmp_path, text))
    assert (config.policy.name, config.policy.params) == (name, params)


@pytest.mark.parametrize(
    ("env", "port", "policy"),
    [
        ({}, 1000, "random"),
        ({"LLM_PICKER_EXTPROC__PORT": "2000"}, 2000, "random"),
        ({"LLM_PICKER_POLICY__NAME": "least_load"}, 1000, "least_load"),
        ({"LLM_PICKER_POLICY": "power_of_two"}, 1000, "power_of_two"),
        ({"LLM_PICKER_EXTPROC__PORT": "2000", "LLM_PICKER_POLICY__NAME": "least_load",
          "OTHER": "x", "llm_picker_extproc__port": "1", "LLM_PICKERX": "1"}, 2000, "least_load"),
    ],
)
def test_env_overrides_the_file(tmp_path: Path, env: dict[str, str], port: int,
                                policy: str) -> None:
    path = write(tmp_path, "extproc: {port: 1000}\npolicy: random\n")
    config = load_config(path, env=env)
    assert (config.extproc.port, config.policy.name) == (port, policy)


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "extproc: {port: 1000}\nadmin: {port: 1001}\npolicy: random\n")
    env = {"LLM_PICKER_EXTPROC__PORT": "2000", "LLM_PICKER_ADMIN__PORT": "2001",
           "LLM_PICKER_POLICY__NAME": "least_load"}
    config = load_config(path, env=env)
    assert (config.extproc.port, config.admin.port, config.policy.name) == (2000, 2001,
                                                                            "least_load")
    config = load_config(path, env=env, overrides={"extproc.port": 3000,
                                                   "policy.name": "power_of_two"})
    assert (config.extproc.port, config.admin.port, config.policy.name) == (3000, 2001,
                                                                            "power_of_two")
    # a flag that was not given (None) leaves the lower layers alone
    config = load_config(path, env=env, overrides={"extproc.port": None, "policy.name": None})
    assert (config.extproc.port, config.policy.name) == (2000, "least_load")
    # flags beat the file without any env
    config = load_config(path, overrides={"admin.port": 4001})
    assert (config.extproc.port, config.admin.port) == (1000, 4001)


def test_env_params_under_a_shorthand_policy(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "policy: random\n"),
                         env={"LLM_PICKER_POLICY__PARAMS__SEED": "4"})
    assert config.policy.name == "random" and config.policy.params == {"seed": 4}


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("bogus: 1\n", {}, "bogus"),  # unknown top-level key
        ("extproc: {port: http}\n", {}, "extproc.port"),  # bad port
        ("extproc: {port: 65536}\n", {}, "extproc.port"),
        ("extproc: {port: -1}\n", {}, "extproc.port"),
        ("extproc: {colour: red, port: 1}\n", {}, "extproc.colour"),
        ("extproc: 5\n", {}, "extproc"),
        ("workers: [{url: 'a:1', priority: -3}]\n", {}, "workers.0.priority"),
        ("workers: [{url: 'a:1'}, {url: 'b:1', priority: 4294967296}]\n", {},
         "workers.1.priority"),
        ("workers: [{url: 'a:1', colour: red}]\n", {}, "workers.0.colour"),  # unknown field
        ("workers: [{url: 'ftp://a:1'}]\n", {}, "workers.0.url"),
        ("workers: [{models: [m]}]\n", {}, "workers.0.url"),
        ("workers: [{url: 'a:1', dp_rank: 2, dp_size: 2}]\n", {}, "workers.0.dp_size"),
        ("workers: [{url: 'a:1', health: {timeout_secs: 0}}]\n", {},
         "workers.0.health.timeout_secs"),
        ("workers: {url: 'a:1'}\n", {}, "workers"),
        ("workers: [{url: 'a:1'}, {url: 'http://a:1/'}]\n", {}, "workers.1.url"),  # duplicate
        ("workers: [{url: 'a:1', id: x}, {url: 'b:1', id: x}]\n", {}, "workers.1.id"),
        ("policy: fastest\n", {}, "policy.name"),  # unknown policy
        ("policy: {name: least_load, params: {x: 1}}\n", {}, "policy.params.x"),
        ("policy: {name: least_load, weight: 1}\n", {}, "policy.weight"),
        ("policy: {params: {seed: 1}}\n", {}, "policy.params.seed"),  # round_robin takes no seed
        ("- a\n- b\n", {}, "config"),  # not a mapping
        ("42\n", {}, "config"),
        ("just text\n", {}, "config"),
        ("a: [unclosed\n", {}, "config"),  # invalid YAML
        ("a: b: c\n", {}, "config"),
        ("policy: random\nworkers: []\npolicy: least_load\n", {}, "config"),  # a key twice
        ("admin: {host: 'not a host'}\n", {}, "admin.host"),  # not "needs admin.token"
        ("flow: {quotas: {'': {requests_per_minute: 1}}}\n", {}, "flow.quotas"),  # a bad key
        ("workers: [{url: 'a:1', labels: {'': v}}]\n", {}, "workers.0.labels"),
        ("extproc: {host: '[::1]', port: 1}\n", {}, "extproc.host"),
        ("extproc: {host: '" + "a" * 60 + "!', port: 1}\n", {}, "extproc.host"),  # at once
        ("", {"LLM_PICKER_ADMIN__PORT": "70000"}, "admin.port"),
        ("", {"LLM_PICKER_EXTPROC__PORT": "[unclosed"}, "extproc.port"),
        ("", {"LLM_PICKER_POLICY__NAME": "fastest"}, "policy.name"),
        ("", {"LLM_PICKER_NOPE": "1"}, "nope"),
        ("extproc: 5\n", {"LLM_PICKER_EXTPROC__PORT": "1"}, "extproc"),
        ("health: {interval_secs: 0}\n", {}, "health.interval_secs"),
        ("max_body_bytes: 0\n", {}, "max_body_bytes"),
        ("max_body_bytes: 3000000000\n", {}, "max_body_bytes"),  # over gRPC's int32 limits
        ("health: {endpoint: health}\n", {}, "health.endpoint"),  # appended to the url
        ("workers: [{url: 'a:1', health: {endpoint: '@b:1/health'}}]\n", {},
         "workers.0.health.endpoint"),  # would probe another host
        ("health: {interval_secs: 1.0e-9}\n", {}, "health.interval_secs"),
        ("load: {interval_secs: 0.001}\n", {}, "load.interval_secs"),
        ("prefix: {enabled: true, index: kv_events}\n", {}, "prefix.tokenizer.kind"),
        ("prefix: {index: exact}\n", {}, "prefix.index"),
        ("prefix: {kv_events: {pending_secs: -1}}\n", {}, "prefix.kv_events.pending_secs"),
        ("workers: [{url: 'a:1', kv_events: {endpoint: 'tcp://*:5557'}}]\n", {},
         "workers.0.kv_events.endpoint"),
        ("workers: [{url: 'a:1', kv_events: {endpoint: 'http://a:1'}}]\n", {},
         "workers.0.kv_events.endpoint"),
        ("workers: [{url: 'a:1', kv_events: {}}]\n", {}, "workers.0.kv_events"),
        ("workers: [{url: 'a:1', tool_parser: hermes}]\n", {}, "workers.0.tool_parser"),
        ("workers: [{url: 'a:1', reasoning_parser: think}]\n", {},
         "workers.0.reasoning_parser"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=env)
    assert caught.value.key == key, caught.value
    assert str(caught.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"extproc.port": "x"}, "extproc.port"), ({"policy.name": "fastest"}, "policy.name"),
     ({"admin.port": 99999}, "admin.port")],
)
def test_bad_flags_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert caught.value.key == key


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.key == "config"
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)  # a directory
    assert caught.value.key == "config"


def test_example_config_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "examples" / "picker.yaml")
    assert config.policy.name == "least_load" and len(config.workers) == 2


def test_kv_events_example_config_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "examples" / "picker-kv-events.yaml")
    assert config.prefix.index == "kv_events"
    assert [w.kv_events.endpoint for w in config.workers if w.kv_events] == [
        "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5567"]


def test_prefix_policy_needs_the_index_enabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "policy: prefix_cache\n"))
    assert caught.value.key == "prefix.enabled"
    config = load_config(write(tmp_path, "policy: prefix_cache\nprefix: {enabled: true}\n"))
    assert config.prefix.block_size == 128


def test_admin_off_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "admin: {host: 0.0.0.0, port: 9003}\n"))
    assert caught.value.key == "admin" and "admin.token" in str(caught.value)
    with_token = load_config(write(tmp_path, "admin: {host: 0.0.0.0, port: 9003}\n"),
                             env={"LLM_PICKER_ADMIN__TOKEN": "t0ken"})
    assert with_token.admin.token is not None
    assert "t0ken" not in repr(with_token)
    insecure = load_config(write(tmp_path, "admin: {host: 0.0.0.0, port: 9003, "
                                           "allow_insecure: true}\n"))
    assert insecure.admin.allow_insecure


def test_config_path_variable_is_not_a_key(tmp_path: Path) -> None:
    """Issue 13.1: LLM_PICKER_CONFIG names the file; it used to fail as key `config`."""
    path = write(tmp_path, "policy: random\n")
    config = load_config(path, env={"LLM_PICKER_CONFIG": str(path)})
    assert config.policy.name == "random"


@pytest.mark.parametrize(
    ("env", "key", "variable"),
    [
        ({"LLM_PICKER_POLCY__NAME": "least_load"}, "polcy", "LLM_PICKER_POLCY__NAME"),
        ({"LLM_PICKER_POLICY__NAME": "fastest"}, "policy.name", "LLM_PICKER_POLICY__NAME"),
        ({"LLM_PICKER_ADMIN__PORT": "70000"}, "admin.port", "LLM_PICKER_ADMIN__PORT"),
        ({"LLM_PICKER_LOG__LEVEL": "chatty"}, "log.level", "LLM_PICKER_LOG__LEVEL"),
        ({"LLM_PICKER___ADMIN": "1"}, "LLM_PICKER___ADMIN", "LLM_PICKER___ADMIN"),
        ({"LLM_PICKER_ADMIN__": "1"}, "LLM_PICKER_ADMIN__", "LLM_PICKER_ADMIN__"),
    ],
)
def test_env_mistakes_name_the_variable(env: dict[str, str], key: str, variable: str) -> None:
    """Issue 13.12: the key alone (`polcy:`) does not say where the value came from."""
    with pytest.raises(ConfigError) as caught:
        load_config(env={**env, "LLM_PICKER_EXTPROC__PORT": "9"})
    assert caught.value.key == key
    assert variable in str(caught.value) and "EXTPROC" not in str(caught.value)


def test_a_flag_mistake_does_not_blame_the_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"LLM_PICKER_POLICY__NAME": "random"},
                    overrides={"policy.name": "fastest"})
    assert "LLM_PICKER" not in str(caught.value)


def test_log_settings() -> None:
    assert (load_config().log.level, load_config().log.access) == ("INFO", False)
    config = load_config(env={"LLM_PICKER_LOG__LEVEL": "debug", "LLM_PICKER_LOG__ACCESS": "true"})
    assert (config.log.level, config.log.access) == ("DEBUG", True)


def test_admin_settings_without_a_port_keep_the_default_port() -> None:
    """`admin: {enabled: true}` (the README's LiteLLM line) needs no port."""
    assert load_config(overrides={"admin": {"enabled": True}}).admin.port == 9003
    assert load_config(env={"LLM_PICKER_ADMIN__TOKEN": "t0ken"}).admin.port == 9003


def test_an_empty_admin_token_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"LLM_PICKER_ADMIN__TOKEN": "''", "LLM_PICKER_ADMIN__HOST": "0.0.0.0"})
    assert caught.value.key == "admin.token"


def test_a_numeric_looking_variable_for_a_text_key_is_taken_as_written() -> None:
    """`LLM_PICKER_ADMIN__TOKEN=12345` was refused: YAML read it as a number."""
    config = load_config(env={"LLM_PICKER_ADMIN__TOKEN": "0012345",
                              "LLM_PICKER_LOG__LEVEL": "DEBUG"})
    assert config.admin.token is not None
    assert config.admin.token.get_secret_value() == "0012345"  # not 12345: as written
    with pytest.raises(ConfigError, match=r"extproc.port: .*valid integer.*EXTPROC__PORT"):
        load_config(env={"LLM_PICKER_EXTPROC__PORT": "abc"})


def test_broken_yaml_is_one_line_naming_where(tmp_path: Path) -> None:
    path = tmp_path / "picker.yaml"
    path.write_text("policy: least_load\nworkers: [\n  {url: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and "at line 4" in message, message


def test_a_section_given_as_a_mapping_merges_into_the_files(tmp_path: Path) -> None:
    """`PickerStrategy.attach(router, config=file, prefix={"enabled": True})` dropped the
    file's other prefix settings."""
    path = tmp_path / "picker.yaml"
    path.write_text("prefix: {block_size: 64, enabled: false}\npolicy: prefix_cache\n")
    config = load_config(path, overrides={"prefix": {"enabled": True}})
    assert config.prefix.enabled and config.prefix.block_size == 64


def test_a_mapping_naming_another_policy_replaces_it(tmp_path: Path) -> None:
    """Merging kept the file's prefix_cache params under the new policy's name."""
    path = tmp_path / "picker.yaml"
    path.write_text("prefix: {enabled: true}\n"
                    "policy: {name: prefix_cache, params: {imbalance_abs_count: 8}}\n")
    assert load_config(path, env={"LLM_PICKER_POLICY": "{name: random}"}).policy.name == \
        "random"
    same = load_config(path, overrides={"policy": {"params": {"std_dev_factor": 2.0}}})
    assert same.policy.params == {"imbalance_abs_count": 8, "std_dev_factor": 2.0}


def test_kubernetes_service_links_are_not_settings() -> None:
    """A Service named llm-picker makes Kubernetes inject these into the picker's own pod."""
    links = {"LLM_PICKER_SERVICE_HOST": "10.96.0.7", "LLM_PICKER_SERVICE_PORT": "9002",
             "LLM_PICKER_SERVICE_PORT_GRPC_EXT_PROC": "9002",
             "LLM_PICKER_PORT": "tcp://10.96.0.7:9002",
             "LLM_PICKER_PORT_9002_TCP": "tcp://10.96.0.7:9002",
             "LLM_PICKER_PORT_9002_TCP_ADDR": "10.96.0.7",
             "LLM_PICKER_PORT_9002_TCP_PORT": "9002", "LLM_PICKER_PORT_9002_TCP_PROTO": "tcp"}
    config = load_config(env={**links, "LLM_PICKER_EXTPROC__PORT": "9100"})
    assert config.extproc.port == 9100
    with pytest.raises(ConfigError, match="LLM_PICKER_SERVICE"):
        load_config(env={"LLM_PICKER_SERVICE": "x"})  # not a link: still a mistake


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_prefill_or_decode_worker_without_enable_igw_is_refused_naming_it(
        tmp_path: Path, role: str) -> None:
    text = ("workers:\n  - {url: 10.0.0.1:8000}\n"
            f"  - {{url: 10.0.0.2:8000, worker_type: {role}}}\n")
    with pytest.raises(ConfigError, match=rf"^workers\.1\.worker_type: {role} workers are "
                                          "paired with the other role only with enable_igw"):
        load_config(write(tmp_path, text))
    assert load_config(write(tmp_path, "enable_igw: true\n" + text)).enable_igw


def test_keyed_workers_need_mutual_tls_on_ext_proc(tmp_path: Path) -> None:
    keyed = "workers: [{url: 'a:1', api_key: sk-x}, {url: 'b:1', api_key: sk-y}]\n"
    for extproc in ("", "extproc: {tls: self_signed}\n"):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, keyed + extproc))
        assert caught.value.key == "extproc.tls"
        assert "workers.0.api_key" in str(caught.value) and "client_ca_file" in str(caught.value)
        assert "sk-x" not in str(caught.value)
    allowed = load_config(write(tmp_path, keyed + "extproc: {allow_unauthenticated_keys: true}"))
    assert allowed.workers[0].api_key is not None
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    mutual = load_config(write(tmp_path, keyed + f"extproc: {{tls: {{cert_file: {ca}, "
                                                 f"key_file: {ca}, client_ca_file: {ca}}}}}"))
    assert mutual.extproc.authenticates_clients
    assert load_config(write(tmp_path, "workers: [{url: 'a:1'}]\n")).workers  # no key: no rule
