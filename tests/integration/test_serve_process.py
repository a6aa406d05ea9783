"""`llm-picker serve` as an operator starts it (issue 13, items 1, 10, 11, 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from picker.errors import ConfigError
from picker.listen import listen_socket
from picker_bench.loopback import loopback
from picker_bench.stack import (
    SimSpec,
    envoy_binary,
    free_port,
    spawn,
    start_sim,
    wait_http,
)

PICKER = [sys.executable, "-m", "llm_picker"]


def _config(tmp_path: Path, **extra: object) -> tuple[Path, int, int]:
    extproc, admin = free_port(), free_port()
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump({"extproc": {"port": extproc}, "admin": {"port": admin},
                                    **extra}))
    return path, extproc, admin


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PICKER, *argv], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    """Item 1: LLM_PICKER_CONFIG=... llm-picker serve failed with `config: Extra inputs`."""
    path, _, admin = _config(tmp_path)
    argv = ["env", f"LLM_PICKER_CONFIG={path}", *PICKER, "serve"]
    proc = spawn("picker-env", argv, tmp_path)
    try:
        wait_http(proc, f"http://127.0.0.1:{admin}/health")  # the file's admin port
    finally:
        proc.stop()


def test_busy_ports_are_one_line_errors(tmp_path: Path) -> None:
    """Item 10: a second picker on the same ext_proc port used to start (SO_REUSEPORT) and
    log "serving"; a busy admin port logged "serving", then a traceback."""
    path, extproc, admin = _config(tmp_path)
    for port, what in ((extproc, "ext_proc"), (admin, "the admin API")):
        with listen_socket("127.0.0.1", port, "test"):
            done = _run(["serve", "--config", str(path)])
        assert done.returncode == 1
        assert done.stderr == f"llm-picker: {what} cannot listen on 127.0.0.1:{port}: " \
                              "Address already in use\n", done.stderr


def test_second_picker_on_a_live_port_refuses(tmp_path: Path) -> None:
    path, extproc, admin = _config(tmp_path)
    first = spawn("first", [*PICKER, "serve", "--config", str(path)], tmp_path)
    try:
        wait_http(first, f"http://127.0.0.1:{admin}/health")
        done = _run(["serve", "--config", str(path), "--admin-port", str(free_port())])
        assert done.returncode == 1
        assert done.stderr.strip() == (f"llm-picker: ext_proc cannot listen on "
                                       f"127.0.0.1:{extproc}: Address already in use")
    finally:
        first.stop()


def test_log_level(tmp_path: Path) -> None:
    """Item 11: "serving" is an INFO line (it was a WARNING); --log-level WARNING hides it."""
    path, _, admin = _config(tmp_path)
    for level, shown in (("info", True), ("WARNING", False)):
        proc = spawn(f"picker-{level}", [*PICKER, "serve", "--config", str(path),
                                         "--log-level", level], tmp_path)
        try:
            wait_http(proc, f"http://127.0.0.1:{admin}/health")
            if shown:  # the admin API answers before the runtime has started, and a SIGTERM
                # then ends the start with nothing logged (seen once on a loaded machine)
                proc.wait_logged("llm-picker serving")
        finally:
            proc.stop()
        log = proc.log_path.read_text()
        assert (" INFO llm-picker serving: ext_proc on " in log) is shown, log
        assert ("(plaintext), admin on " in log) is shown, log  # the transport, said
        assert "WARNING llm-picker serving" not in log


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_the_event_loop_serve_runs_on(tmp_path: Path, choice: str, loop: str) -> None:
    """Issue 27: uvloop (installed with the picker) unless `event_loop` says asyncio; the
    serving line names the loop."""
    path, _, admin = _config(tmp_path, event_loop=choice)
    proc = spawn(f"picker-{choice}", [*PICKER, "serve", "--config", str(path)], tmp_path)
    try:
        wait_http(proc, f"http://127.0.0.1:{admin}/health")
        # The admin server answers before the serving line is written.
        proc.wait_logged("llm-picker serving")
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert f" workers, event loop {loop}" in log, log


def test_event_loop_uvloop_without_uvloop_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_picker.cli import event_loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # importing it now raises ImportError
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match="^event_loop: uvloop is not installed"):
        event_loop_factory("uvloop")


def test_envoy_config_matches_the_picker(tmp_path: Path) -> None:
    """Item 16: the printed bootstrap runs as is in front of the picker it was made for."""
    sim = SimSpec("a", "sim-model")
    sim_proc = start_sim(sim, tmp_path)
    path, extproc, admin = _config(
        tmp_path, max_body_bytes=100_000,
        workers=[{"url": f"http://127.0.0.1:{sim.port}", "id": "a", "models": ["sim-model"]}])
    listen, envoy_admin = free_port(), free_port()
    done = _run(["envoy-config", "--config", str(path), "--listen", f"127.0.0.1:{listen}",
                 "--admin", f":{envoy_admin}"])
    assert done.returncode == 0, done.stderr
    bootstrap = yaml.safe_load(done.stdout)
    assert bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] \
        == 100_000
    (tmp_path / "envoy.yaml").write_text(done.stdout)
    picker = spawn("picker", [*PICKER, "serve", "--config", str(path)], tmp_path)
    envoy = spawn("envoy", [envoy_binary(), "-c", str(tmp_path / "envoy.yaml"),
                            "--use-dynamic-base-id", "--concurrency", "1"], tmp_path)
    try:
        wait_http(picker, f"http://127.0.0.1:{admin}/health")
        wait_http(envoy, f"http://127.0.0.1:{envoy_admin}/ready")
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
        reply = loopback().post(f"http://127.0.0.1:{listen}/v1/chat/completions", json=body,
                                timeout=10)
        assert reply.status_code == 200 and reply.headers["x-picker-sim-worker"] == "a"
        big = {**body, "messages": [{"role": "user", "content": "x" * 200_000}]}
        reply = loopback().post(f"http://127.0.0.1:{listen}/v1/chat/completions", json=big,
                                timeout=10)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
    finally:
        for proc in (envoy, picker, sim_proc):
            proc.stop()


def test_envoy_config_rejects_a_bad_address(tmp_path: Path) -> None:
    path, _, _ = _config(tmp_path)
    done = _run(["envoy-config", "--config", str(path), "--listen", "10000"])
    assert done.returncode == 2 and "'10000' is not [host]:port" in done.stderr


def test_sim_prints_a_start_up_line(tmp_path: Path) -> None:
    """Item 17: a sim used to print nothing, so a new user could not tell it was up."""
    sim = SimSpec("a", "my-model")
    proc = start_sim(sim, tmp_path)
    proc.stop()
    assert f"llm-picker sim 'a' serving model 'my-model' on http://127.0.0.1:{sim.port}" \
        in proc.log_path.read_text()


def test_example_config_lists_every_policy() -> None:
    """Item 17: examples/picker.yaml's comment named 4 of the 10 policies."""
    from picker.policies import POLICIES

    text = (Path(__file__).resolve().parents[2] / "examples" / "picker.yaml").read_text()
    comments = " ".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    words = set(comments.replace("|", " ").replace(",", " ").split())
    assert set(POLICIES) <= words, sorted(set(POLICIES) - words)
