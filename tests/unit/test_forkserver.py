"""picker_bench.forkserver: a forked `llm-picker` behaves as one started fresh would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from picker_bench.forkserver import HASH_SEED, LITELLM, ForkedChild, ForkServer
from picker_bench.loopback import loopback
from picker_bench.stack import FORK_SERVER_ENV, SimSpec, free_port, spawn, start_sim
from tests.waiting import process_running, wait_until


@pytest.fixture
def server() -> ForkServer:
    return ForkServer()


def test_a_child_runs_the_command_with_its_environment_directory_and_log(
        server: ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "picker.yaml").write_text("policy: {name: round_robin}\n")
    good = server.spawn(["check-config", "picker.yaml"], dict(os.environ), tmp_path / "ok.log")
    bad = server.spawn(["check-config", "picker.yaml"],
                       {**os.environ, "LLM_PICKER_POLICY__NAME": "bogus"}, tmp_path / "bad.log")
    # The relative path was read in the caller's directory, each with the environment given,
    # and what each printed (stdout and stderr) is in its own log.
    assert good.wait(30) == 0
    assert "picker.yaml: OK (policy round_robin" in (tmp_path / "ok.log").read_text()
    assert bad.wait(30) == 2
    assert "unknown policy 'bogus'" in (tmp_path / "bad.log").read_text()


def test_exit_codes_and_signals_read_as_popen_gives_them(server: ForkServer,
                                                         tmp_path: Path) -> None:
    port = free_port()
    child = server.spawn(["sim", "--port", str(port), "--model", "m"], dict(os.environ),
                         tmp_path / "sim.log")
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 20, "the forked sim")
    assert child.poll() is None and process_running(child.pid)
    child.send_signal(signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL
    child.kill()  # reaped: no signal goes to a pid that may be someone else's now


def test_a_restart_logging_to_the_same_file_is_not_taken_for_its_predecessor(
        server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "picker.log"
    ports = [free_port(), free_port()]
    first = server.spawn(["sim", "--port", str(ports[0]), "--model", "m"], dict(os.environ), log)
    first.kill()  # not waited for: its exit is reaped after the next start
    second = server.spawn(["sim", "--port", str(ports[1]), "--model", "m"], dict(os.environ),
                          log)
    assert first.wait(10) == -signal.SIGKILL
    wait_until(lambda: _answers(f"http://127.0.0.1:{ports[1]}/health"), 20, "the second sim")
    assert second.poll() is None
    second.kill()
    assert second.wait(10) == -signal.SIGKILL


def test_a_restart_starts_a_fresh_log_and_a_vanished_directory_stops_nothing(
        server: ForkServer, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    port = free_port()
    doomed = server.spawn(["sim", "--port", str(port), "--model", "m"], dict(os.environ),
                          gone / "sim.log")
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 20, "the doomed sim")
    shutil.rmtree(gone)  # the test's directory removed with its child still running
    doomed.kill()
    log = tmp_path / "picker.log"
    for text in ("first", "second"):
        child = server.spawn(["check-config", text], dict(os.environ), log)
        assert child.wait(30) == 2
        assert text in log.read_text()
    assert "first" not in log.read_text()  # truncated as a fresh start's log is
    wait_until(lambda: not process_running(doomed.pid), 10, "the doomed sim gone")


def test_interpreter_settings_the_server_lacks_get_a_fresh_interpreter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORK_SERVER_ENV, "1")
    argv = [sys.executable, "-m", "llm_picker", "sim", "--help"]
    for env, fresh in (({}, False), ({"PYTHONDEVMODE": "1"}, True),
                       ({"PYTHONHASHSEED": "7"}, True),
                       ({"PYTHONHASHSEED": HASH_SEED}, False)):
        proc = spawn("cli", argv, tmp_path, env)
        assert isinstance(proc.popen, subprocess.Popen) is fresh, env
        assert proc.popen.wait(30) == 0


def test_a_proxy_is_forked_unless_litellm_would_have_read_another_environment() -> None:
    """LiteLLM reads its environment as it imports: only the picker's settings (read when
    the proxy starts) and pytest's name for the running test may differ from the server's."""
    offline = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    server = ForkServer(LITELLM, offline)  # not started: that takes a start
    assert server.runs_alike({**offline, "LLM_PICKER_POLICY__NAME": "least_load",
                              "PYTEST_CURRENT_TEST": "another test"})
    assert not server.runs_alike({**offline, "LITELLM_LOG": "DEBUG"})
    assert not server.runs_alike({**offline, "LITELLM_LOCAL_MODEL_COST_MAP": "False"})
    # Unnamed, a fresh proxy would fetch its cost map: not what the server did.
    assert not server.runs_alike({key: value for key, value in offline.items()
                                  if key != "LITELLM_LOCAL_MODEL_COST_MAP"})


def test_the_harness_uses_the_server_only_when_asked(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORK_SERVER_ENV, "1")
    forked = start_sim(SimSpec("forked", "m"), tmp_path)
    monkeypatch.setenv(FORK_SERVER_ENV, "0")
    fresh = start_sim(SimSpec("fresh", "m"), tmp_path)
    try:
        assert isinstance(forked.popen, ForkedChild)
        assert isinstance(fresh.popen, subprocess.Popen)
    finally:
        forked.stop()
        fresh.stop()
    # Stopped alike: uvicorn shuts down on SIGTERM, then raises it again (uvicorn/server.py,
    # capture_signals), so both end as killed by it.
    assert forked.popen.returncode == fresh.popen.returncode == -signal.SIGTERM
    # Other commands of the interpreter, and other programs, start fresh.
    monkeypatch.setenv(FORK_SERVER_ENV, "1")
    other = spawn("other", [sys.executable, "-m", "llm_picker", "check-config", "--help"],
                  tmp_path)
    assert isinstance(other.popen, subprocess.Popen)
    assert other.popen.wait(30) == 0


def test_children_die_when_the_harness_goes_away(tmp_path: Path) -> None:
    script = ("import sys, os\n"
              "from pathlib import Path\n"
              "from picker_bench.forkserver import ForkServer\n"
              "child = ForkServer().spawn(['sim', '--port', sys.argv[2], '--model', 'm'],"
              " dict(os.environ), Path(sys.argv[1]) / 'sim.log')\n"
              "print(child.pid, flush=True)\n"
              "os._exit(3)\n")  # no atexit: as if the harness were killed
    port = free_port()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    pid = int(done.stdout.split()[0])
    wait_until(lambda: not process_running(pid), 10, "the orphaned child killed")


def _answers(url: str) -> bool:
    try:
        return loopback().get(url, timeout=1).is_success
    except httpx.HTTPError:
        return False
