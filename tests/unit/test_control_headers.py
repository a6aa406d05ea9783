"""picker.routing.control_headers: one table of routing headers, and every Envoy bootstrap the
project
ships or renders agreeing with it (issue 30 items 5-6, issue 31 items 4 and 10)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_picker.envoy_config import ENVOY_DIR, render_bootstrap
from picker.config import load_config
from picker.routing import control_headers


def test_llm_d_names_are_read_first_then_the_gateway_ones() -> None:
    """As llm-d-router's GetLowerCaseHeaderValue (pkg/epp/metadata/consts.go:88-100)."""
    slo = control_headers.SLO_TTFT
    assert control_headers.client_value({"x-slo-ttft-ms": "9"}, slo) == "9"
    assert control_headers.client_value({"x-llm-d-slo-ttft-ms": "7", "x-slo-ttft-ms": "9"},
                                        slo) == "7"
    assert control_headers.client_value({}, slo) is None
    assert control_headers.client_value({"x-llm-d-inference-objective": "hi"},
                                        control_headers.OBJECTIVE) == "hi"


def test_every_alias_and_its_target_are_stripped() -> None:
    stripped = set(control_headers.STRIPPED)
    assert set(control_headers.ALIASES) | set(control_headers.ALIASES.values()) <= stripped
    assert not set(control_headers.PICKER_SET) & set(control_headers.CLIENT_INPUT)


def _manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _rendered() -> dict[str, dict[str, Any]]:
    """What `envoy-config` writes, in each of its modes."""
    def tls(tmp: Path) -> dict[str, str]:
        return {"cert_file": str(tmp), "key_file": str(tmp)}

    plain = load_config()
    return {
        "envoy-config": yaml.safe_load(render_bootstrap(plain)),
        "envoy-config --body-mode FULL_DUPLEX_STREAMED": yaml.safe_load(
            render_bootstrap(plain, body_mode="FULL_DUPLEX_STREAMED")),
        "envoy-config (tls files)": yaml.safe_load(render_bootstrap(load_config(
            overrides={"extproc.tls": tls(Path(__file__))}))),
        "envoy-config (self_signed)": yaml.safe_load(render_bootstrap(load_config(
            overrides={"extproc.tls": "self_signed"}))),
        "envoy-config --mode authz --workers 2": yaml.safe_load(
            render_bootstrap(plain, authz_port=9100, processes=2)),
    }


@functools.cache  # two modules parametrize on them at collection, in every xdist worker
def all_bootstraps() -> dict[str, dict[str, Any]]:
    shipped = {path.name: yaml.safe_load(path.read_text())
               for path in sorted(ENVOY_DIR.glob("*.yaml"))}
    return {**shipped, **_rendered()}


@pytest.mark.parametrize(("name", "bootstrap"), list(all_bootstraps().items()))
def test_the_first_filter_removes_every_picker_set_header(name: str,
                                                          bootstrap: dict[str, Any]) -> None:
    first = _manager(bootstrap)["http_filters"][0]
    assert first["name"] == "envoy.filters.http.header_mutation", name
    removed = [m["remove"] for m in first["typed_config"]["mutations"]["request_mutations"]]
    assert removed == list(control_headers.PICKER_SET)


def test_fail_open_routes_on_the_pickers_metadata_and_strips_client_input() -> None:
    bootstrap = yaml.safe_load((ENVOY_DIR / "envoy-fail-open.yaml").read_text())
    picked, fallback = _manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    assert "headers" not in picked["match"]  # a client could send a header; not metadata
    assert picked["match"]["dynamic_metadata"][0]["filter"] == "envoy.lb"
    assert fallback["request_headers_to_remove"] == list(control_headers.CLIENT_INPUT)


def test_authz_sends_the_client_input_and_copies_what_the_picker_sets() -> None:
    bootstrap = yaml.safe_load((ENVOY_DIR / "envoy-authz.yaml").read_text())
    ext_authz = next(f for f in _manager(bootstrap)["http_filters"]
                     if f["name"] == "envoy.filters.http.ext_authz")["typed_config"]
    sent = {p["exact"] for p in ext_authz["allowed_headers"]["patterns"]}
    assert set(control_headers.CLIENT_INPUT) | {control_headers.HOP} <= sent
    upstream = {p["exact"] for p in
                ext_authz["http_service"]["authorization_response"]["allowed_upstream_headers"]
                ["patterns"]}
    assert {control_headers.DESTINATION, control_headers.LEASE, control_headers.DP_RANK,
            control_headers.PREFILLER, control_headers.HOP} <= upstream
