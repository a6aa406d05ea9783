"""envoy/envoy.yaml and the variants the launcher renders are accepted by the real Envoy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_picker.envoy_config import ext_proc_config
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
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert all(ext_proc_config(f) is None for f in manager["typed_config"]["http_filters"])
    # Every route goes to the upstream: the ORIGINAL_DST cluster would refuse every request.
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {route["route"]["cluster"] for route in routes} == {"llm_picker"}
    validate(config, tmp_path)


@pytest.mark.parametrize("processes", [1, 3])
def test_authz_bootstrap_for_every_process_is_valid(tmp_path: Path, processes: int) -> None:
    """`envoy-config --mode authz --workers N`: N check endpoints, and N access loggers each
    keeping the entries whose lease token carries its process's prefix."""
    from llm_picker.envoy_config import render_bootstrap
    from picker.config import load_config

    text = render_bootstrap(load_config(overrides={"extproc.port": 19002}),
                            authz_port=19100, processes=processes)
    config = yaml.safe_load(text)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    checks = clusters["llm_picker_authz"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in checks] == \
        [19100 + i for i in range(processes)]
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    loggers = [entry for entry in manager["typed_config"]["access_log"]
               if entry["name"] == "envoy.access_loggers.http_grpc"]
    assert len(loggers) == processes
    if processes > 1:
        for index, logger in enumerate(loggers):
            header = logger["filter"]["header_filter"]["header"]
            assert header["string_match"] == {"prefix": f"p{index}-"}
            cluster = clusters[logger["typed_config"]["common_config"]["grpc_service"]
                               ["envoy_grpc"]["cluster_name"]]
            address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            assert address["endpoint"]["address"]["socket_address"]["port_value"] == \
                19002 + index
    validate(config, tmp_path)
