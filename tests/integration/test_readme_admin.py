"""The README's admin-API curl commands, run with real curl against a live picker.

Run as written except for the ports (the README's fixed 9003/8003 become free ports, so the
test can run beside others); each command's status must match what its comment promises.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from picker_bench.stack import free_port, start_picker
from tests.sim_thread import running_sim

README = Path(__file__).resolve().parents[2] / "README.md"


def admin_commands() -> list[str]:
    section = README.read_text().split("## Workers at runtime", 1)[1]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def expected_status(command: str) -> int:
    comment = command.split("#", 1)[1]
    found = re.search(r"\b([1-5]\d\d)\b", comment)
    return int(found.group(1)) if found else 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_admin_commands_work_as_written(tmp_path: Path) -> None:
    commands = admin_commands()
    assert len(commands) >= 5
    admin_port = free_port()
    with running_sim(model="my-model", worker_id="a") as engine_a, \
            running_sim(model="my-model", worker_id="c") as engine_c:
        c_port = engine_c.rsplit(":", 1)[1]
        config = {"extproc": {"port": free_port()}, "admin": {"port": admin_port},
                  "workers": [{"url": engine_a, "id": "engine-a", "models": ["my-model"]}]}
        picker = start_picker(config, tmp_path)
        try:
            for command in commands:
                runnable = (command.replace("127.0.0.1:9003", f"127.0.0.1:{admin_port}")
                            .replace("127.0.0.1:8003", f"127.0.0.1:{c_port}")
                            .replace("%3A8003", f"%3A{c_port}"))
                run = subprocess.run(
                    ["bash", "-c", f"{runnable.split('#', 1)[0]} -s -o /dev/null "
                                   "-w '%{http_code}' --max-time 20"],
                    capture_output=True, text=True, timeout=30, check=False)
                assert run.stdout == str(expected_status(command)), (command, run.stdout)
        finally:
            picker.stop()
