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


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llm_picker", *args],
                          capture_output=True, text=True, timeout=30)


def test_sim_refuses_a_port_out_of_range_instead_of_wrapping_it() -> None:
    done = _run("sim", "--port", "99999")
    assert done.returncode == 2 and "a port is 1-65535, not 99999" in done.stderr


def test_sim_names_a_bad_setting_in_one_line() -> None:
    done = _run("sim", "--port", "8009", "--failure-rate", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "llm-picker sim: sim config: failure_rate must be between 0 and 1, got 2.0")


def test_sim_on_a_taken_port_says_so_in_one_line() -> None:
    from picker.listen import listen_socket

    taken = listen_socket("127.0.0.1", 0, "test")
    try:
        done = _run("sim", "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the sim cannot listen on 127.0.0.1:" in done.stderr


def test_demo_checks_its_policy_and_request_count_before_starting_anything() -> None:
    done = _run("demo", "--policy", "nope")
    assert done.returncode == 2 and "policy.name: unknown policy 'nope'" in done.stderr
    assert "starting" not in done.stdout
    assert _run("demo", "--requests", "-3").returncode == 2


def test_serve_refuses_two_of_its_servers_on_one_port() -> None:
    done = _run("serve", "--extproc-port", "9402", "--admin-port", "9402")
    assert done.returncode == 2
    assert done.stderr.strip() == ("llm-picker: configuration error: admin.port: 9402 is also "
                                   "extproc.port: move admin.port or extproc.port")
    authz = _run("serve", "--mode", "authz", "--extproc-port", "9402", "--authz-port", "9402")
    assert authz.returncode == 2 and "--authz-port: 9402 is also extproc.port" in authz.stderr


def test_envoy_config_refuses_a_tls_dir_it_would_not_use() -> None:
    done = _run("envoy-config", "--tls-dir", "/srv/tls")
    assert done.returncode == 2 and "--tls-dir: only with extproc.tls" in done.stderr


def test_a_wrong_tls_setting_names_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "picker.yaml"
    path.write_text("extproc: {tls: bogus}\n")
    done = _run("serve", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "llm-picker: configuration error: extproc.tls: must be self_signed or a mapping with "
        "cert_file and key_file (and client_ca_file for mTLS), not 'bogus'")


def test_version_is_the_installed_packages() -> None:
    import importlib.metadata

    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"llm-picker {importlib.metadata.version('llm-picker')}"
