"""envoy/envoy.yaml and the variants the launcher renders are accepted by the real Envoy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from picker_bench.stack import ENVOY_TEMPLATE, envoy_binary, render_envoy_config


def validate(config: dict[str, Any] | None, tmp_path: Path) -> None:
    path = ENVOY_TEMPLATE
    if config is not None:
        path = tmp_path / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
    done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shipped_bootstrap_is_valid(tmp_path: Path) -> None:
    validate(None, tmp_path)


@pytest.mark.parametrize("body_mode", ["BUFFERED", "FULL_DUPLEX_STREAMED"])
def test_rendered_variants_are_valid(tmp_path: Path, body_mode: str) -> None:
    config = render_envoy_config(listen_port=18000, admin_port=18001, picker_port=18002,
                                 body_mode=body_mode)
    text = yaml.safe_dump(config)
    assert "18002" in text and body_mode in text
    validate(config, tmp_path)


def test_envoy_alone_variant_has_no_ext_proc(tmp_path: Path) -> None:
    config = render_envoy_config(listen_port=18000, admin_port=18001, picker_port=None,
                                 upstream_port=18003)
    assert "ext_proc" not in yaml.safe_dump(config)
    validate(config, tmp_path)
