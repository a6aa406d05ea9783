"""`llm-picker demo` with each kind of policy: it takes no config file, so it must switch on
what the asked-for policy reads (the prefix index, engine metrics) itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from picker.config import load_config
from picker.errors import ConfigError
from picker_bench.demo import demo_settings


# cache_aware keeps a tree of its own (sglang-router's) and needs no prefix index.
@pytest.mark.parametrize("policy", ["prefix_cache"])
def test_a_prefix_policy_is_refused_alone_and_accepted_with_the_demo_settings(
        policy: str) -> None:
    with pytest.raises(ConfigError, match="prefix.enabled"):
        load_config(None, overrides={"policy.name": policy})
    assert demo_settings(policy) == {"prefix": {"enabled": True}}
    assert load_config(None, overrides={"policy.name": policy,
                                        **demo_settings(policy)}).prefix.enabled


@pytest.mark.parametrize("policy", ["round_robin", "cache_aware"])
def test_a_policy_reading_nothing_extra_changes_nothing(policy: str) -> None:
    assert demo_settings(policy) == {}


def test_demo_runs_a_prefix_policy_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "llm_picker", "demo", "--policy",
                           "prefix_cache", "--requests", "12"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llm-picker (prefix_cache; prefix.enabled)" in done.stdout
    assert "prefix_cache -> sim-" in done.stdout
