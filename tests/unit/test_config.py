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
    assert config.extproc.host == "127.0.0.1"
    assert config.policy.name == "round_robin"
    assert config.workers == []


def test_file_with_policy_shorthand_and_workers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
policy: least_load
workers:
  - url: http://127.0.0.1:8001
    models: [m]
"""))
    assert config.policy.name == "least_load"
    assert config.workers[0].models == ["m"]


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "extproc: {port: 1000}\npolicy: random\n")
    env = {"LLM_PICKER_EXTPROC__PORT": "2000", "LLM_PICKER_POLICY__NAME": "least_load",
           "OTHER": "x"}
    config = load_config(path, env=env)
    assert (config.extproc.port, config.policy.name) == (2000, "least_load")
    config = load_config(path, env=env, overrides={"extproc.port": 3000, "policy.name": None})
    assert (config.extproc.port, config.policy.name) == (3000, "least_load")


def test_env_params_under_a_shorthand_policy(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "policy: random\n"),
                         env={"LLM_PICKER_POLICY__PARAMS__SEED": "4"})
    assert config.policy.name == "random" and config.policy.params == {"seed": 4}


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("bogus: 1\n", {}, "bogus"),
        ("extproc: {port: http}\n", {}, "extproc.port"),
        ("workers: [{url: 'a:1', priority: -3}]\n", {}, "workers.0.priority"),
        ("workers: [{url: 'a:1', colour: red}]\n", {}, "workers.0.colour"),
        ("policy: fastest\n", {}, "policy.name"),
        ("policy: {name: least_load, params: {x: 1}}\n", {}, "policy.params"),
        ("- a\n- b\n", {}, "config"),
        ("a: [unclosed\n", {}, "config"),
        ("", {"LLM_PICKER_ADMIN__PORT": "70000"}, "admin.port"),
        ("", {"LLM_PICKER_NOPE": "1"}, "nope"),
        ("health: {interval_secs: 0}\n", {}, "health.interval_secs"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=env)
    assert caught.value.key == key, caught.value


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_example_config_loads() -> None:
    config = load_config(Path(__file__).parents[2] / "examples" / "picker.yaml")
    assert config.policy.name == "least_load" and len(config.workers) == 2


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
