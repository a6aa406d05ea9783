"""`llm-picker serve` refuses bad configuration before listening, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serve_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("workers: [{url: 'a:1', priority: high}]\n")
    done = subprocess.run([sys.executable, "-m", "llm_picker", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "workers.0.priority" in done.stderr


def test_serve_rejects_an_unknown_policy_flag_value(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "llm_picker", "serve", "--policy", "nope"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "policy.name" in done.stderr
