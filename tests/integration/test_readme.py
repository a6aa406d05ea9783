"""The README's commands, run exactly as written, so they cannot drift (issue 13, Done means).

The rule, which the README states where its first runnable block appears:
- Every fenced block tagged `sh` is run line by line, in README order, by bash from the
  repository root, with this interpreter's bin directory (.venv/bin) first on PATH.
  LITELLM_LOCAL_MODEL_COST_MAP is set because tests run without network (LiteLLM would
  otherwise try to fetch its cost map).
- A line ending in `&` (before any comment) starts a server: it runs in its own process group
  for the rest of the test, must still be running at the end (a server that died is a failure),
  and is then stopped with SIGTERM (SIGKILL after 10 s).
- Any other line must exit 0, run once: no retry here, so a line that needs a server just
  started must wait for it itself (`curl --retry`), as it must for a person pasting the block.
- `make test` is not run: it is the suite this test belongs to.
- Every fenced block must name its language (sh, text, yaml, python), so a new command block
  cannot escape this test by being untagged.
The commands use the README's fixed ports; the test fails up front naming any that is taken.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from picker_bench.stack import FORK_SERVER_ENV

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LANGUAGES = {"sh", "text", "yaml", "python"}
NOT_RUN = {"make test"}  # the suite itself
LINE_SECS = 180.0  # one line, its own waits included
BACKGROUND = re.compile(r"&\s*(#.*)?$")
FENCE = re.compile(r"^```(\S*)\s*$")
# The ports the README's commands listen on (sims, picker, Envoy, Envoy admin, LiteLLM).
PORTS = (8001, 8002, 9002, 9003, 10000, 9901, 4000, 10001, 9902, 9012, 9013, 9014, 10002, 9903,
         8011, 8012, 9022, 9023, 10003, 9904, 8021, 8022, 5557, 5558, 5567, 5568, 9032, 9033,
         10004, 9905, 9042, 9043, 9044, 10005, 9906)


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block."""
    out: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and current is None:
            out.append((fence.group(1), current := []))
        elif line.startswith("```") and current is not None:
            current = None
        elif current is not None:
            current.append(line)
    return out


def commands() -> list[str]:
    return [line for language, lines in blocks(README.read_text()) if language == "sh"
            for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_every_block_is_tagged() -> None:
    untagged = [lines[:1] for language, lines in blocks(README.read_text())
                if language not in LANGUAGES]
    assert not untagged, f"README blocks without a language tag: {untagged}"
    assert len(commands()) >= 10


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    taken = [port for port in PORTS if _port_taken(port)]
    assert not taken, f"ports the README uses are taken (another run?): {taken}"
    # As a reader's shell has it: no fork server (tests/conftest.py) for what `make demo` starts.
    env = {key: value for key, value in os.environ.items() if key != FORK_SERVER_ENV}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    servers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for i, line in enumerate(commands()):
            command = BACKGROUND.sub("", line).strip()
            if command.split("#", 1)[0].strip() in NOT_RUN:
                continue
            log = tmp_path / f"{i:02d}.log"
            if BACKGROUND.search(line):
                with log.open("wb") as out:
                    servers.append((command, subprocess.Popen(
                        ["bash", "-c", command], cwd=ROOT, env=env, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True), log))
                continue
            done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env,
                                  capture_output=True, timeout=LINE_SECS)
            if done.returncode != 0:
                dead = [(c, log.read_text()[-2000:]) for c, p, log in servers
                        if p.poll() is not None]
                pytest.fail(f"{command!r} exited {done.returncode}: "
                            f"{done.stdout[-1000:]!r} {done.stderr[-2000:]!r}; "
                            f"servers that died: {dead}")
        for command, proc, log in servers:
            assert proc.poll() is None, f"{command!r} died: {log.read_text()[-2000:]}"
    finally:
        for _, proc, _ in reversed(servers):
            _stop(proc)
