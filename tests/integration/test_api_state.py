"""The admin API's workers survive a restart (admin.state_file), through a real `llm-picker serve`
that is stopped, SIGKILLed and started again."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from picker_bench.loopback import loopback
from picker_bench.stack import Process, free_port, start_picker
from tests.integration.conftest import MODEL

# Nothing listens on these: with `models` given a worker registers at once (202), unhealthy
# until health checks reach it, which is all these tests need of a worker.
ENGINE_A = "http://127.0.0.1:1"
ENGINE_B = "http://127.0.0.1:2"


def _config(tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A picker's settings with its state file in a fresh directory, and its admin API's URL."""
    (tmp_path / "state").mkdir()
    admin = free_port()
    return ({"extproc": {"port": free_port()},
             "admin": {"port": admin, "state_file": str(tmp_path / "state" / "workers.json")},
             "workers": []}, f"http://127.0.0.1:{admin}")


def _workers(admin_url: str) -> dict[str, dict[str, Any]]:
    listed = loopback().get(f"{admin_url}/workers", timeout=5).json()["workers"]
    return {w["url"]: w for w in listed}


def test_workers_added_changed_and_drained_through_the_api_survive_a_restart(
        tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    picker = start_picker(config, tmp_path)
    try:
        for engine, worker_id in ((ENGINE_A, "a"), (ENGINE_B, "b")):
            posted = loopback().post(f"{url}/workers", timeout=10, json={
                "url": engine, "id": worker_id, "models": [MODEL]})
            assert posted.status_code == 202, posted.text
        patched = loopback().patch(f"{url}/workers/a", timeout=5,
                                   json={"priority": 77, "labels": {"zone": "b"}})
        assert patched.status_code == 200, patched.text
        deleted = loopback().delete(f"{url}/workers/b", timeout=10)
        assert deleted.status_code == 200, deleted.text
    finally:
        picker.stop()
    picker = start_picker(config, tmp_path)
    try:
        restored = _workers(url)
        assert list(restored) == [ENGINE_A]
        assert restored[ENGINE_A]["priority"] == 77
        assert restored[ENGINE_A]["labels"] == {"zone": "b"}
        assert restored[ENGINE_A]["models"] == [MODEL]
        assert "declared_in" not in restored[ENGINE_A]  # still the API's: it may change it
        assert loopback().patch(f"{url}/workers/a", json={"priority": 5}, timeout=5).status_code \
            == 200
    finally:
        picker.stop()


def test_a_worker_the_configuration_now_declares_is_the_files_and_named(
        tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    picker = start_picker(config, tmp_path)
    try:
        for engine in (ENGINE_A, ENGINE_B):
            assert loopback().post(f"{url}/workers", timeout=10, json={
                "url": engine, "models": [MODEL]}).status_code == 202
    finally:
        picker.stop()
    config["workers"] = [{"url": ENGINE_A, "models": [MODEL], "priority": 3}]
    picker = start_picker(config, tmp_path)
    try:
        restored = _workers(url)
        assert set(restored) == {ENGINE_A, ENGINE_B}
        declared = str((tmp_path / "picker.yaml").resolve())
        assert restored[ENGINE_A]["declared_in"] == declared
        assert restored[ENGINE_A]["priority"] == 3
        log = picker.log_path.read_text()
        state_file = config["admin"]["state_file"]
        assert f"worker {ENGINE_A} saved in {state_file} is also in the configuration " \
               f"(declared in {declared})" in log
        saved = json.loads(Path(state_file).read_text())
        assert [r["spec"]["url"] for r in saved["registrations"]] == [ENGINE_B]
    finally:
        picker.stop()


def test_a_picker_killed_mid_write_restarts_with_the_old_or_the_new_state(
        tmp_path: Path) -> None:
    """PATCHes as fast as the API takes them while the picker is SIGKILLed at a random moment,
    a few times over: each restart finds the last acknowledged priority or the one in flight,
    never a broken file (which would stop the picker at start-up)."""
    config, url = _config(tmp_path)
    picker = start_picker(config, tmp_path)
    assert loopback().post(f"{url}/workers", timeout=10, json={
        "url": ENGINE_A, "id": "a", "models": [MODEL]}).status_code == 202
    acknowledged = 50  # the default priority
    rng = random.Random(33)
    try:
        for _ in range(4):
            acknowledged = _patch_until_killed(url, picker, acknowledged, rng.uniform(0.1, 0.6))
            picker = start_picker(config, tmp_path)
            priority = _workers(url)[ENGINE_A]["priority"]
            assert priority in (acknowledged, acknowledged + 1), (priority, acknowledged)
            acknowledged = priority
    finally:
        picker.stop()


def _patch_until_killed(url: str, picker: Process, start: int, after_secs: float) -> int:
    """PATCH priorities start+1, start+2, ... until the picker is SIGKILLed `after_secs` in;
    the last priority the API acknowledged."""
    killer = threading.Timer(after_secs, picker.popen.kill)
    killer.start()
    acknowledged = start
    deadline = time.monotonic() + after_secs + 10
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.patch(f"{url}/workers/a", json={"priority": acknowledged + 1})
            except httpx.TransportError:
                break
            assert answer.status_code == 200, answer.text
            acknowledged += 1
    killer.join()
    picker.popen.wait(5)
    assert acknowledged > start, "no PATCH was acknowledged before the kill"
    return acknowledged


def test_a_state_file_that_is_not_one_stops_the_start_naming_the_setting(
        tmp_path: Path) -> None:
    """Never written by the picker (its writes are whole): someone else's file is not guessed
    at, and the picker does not start."""
    config, _ = _config(tmp_path)
    Path(config["admin"]["state_file"]).write_text('{"format": 1, "registrations": [')
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "llm_picker", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"admin.state_file: {config['admin']['state_file']} is not JSON" in done.stderr
