"""picker.fleet.api_state: the admin API's workers on disk, replaced atomically."""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from picker.config import load_config
from picker.errors import ConfigError
from picker.fleet.api_state import SavedRegistration, StateFile
from picker.fleet.worker_spec import WorkerSpec


def _saved(count: int, priority: int) -> list[SavedRegistration]:
    specs = [WorkerSpec(url=f"http://10.0.{i // 200}.{i % 200}:8000", models=["m"],
                        priority=priority) for i in range(count)]
    return [SavedRegistration(spec, (spec,)) for spec in specs]


def test_what_is_written_is_read_back_keys_included_and_readable_by_its_user_only(
        tmp_path: Path) -> None:
    posted = WorkerSpec(url="http://10.0.0.1:8000", api_key="sk-saved-key", dp_size=2)
    ranks = (posted.updated(url="http://10.0.0.1:8000@0", dp_rank=0, priority=9),
             posted.updated(url="http://10.0.0.1:8000@1", dp_rank=1))
    state = StateFile(tmp_path / "workers.json")
    state.write([SavedRegistration(posted, ranks)])
    [read] = state.read()
    assert read == SavedRegistration(posted, ranks)
    assert read.workers[0].api_key is not None
    assert read.workers[0].api_key.get_secret_value() == "sk-saved-key"
    assert stat.S_IMODE((tmp_path / "workers.json").stat().st_mode) == 0o600


def test_no_file_yet_is_no_worker(tmp_path: Path) -> None:
    assert StateFile(tmp_path / "workers.json").read() == []


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "is not JSON"),
    ('{"format": 2, "registrations": []}', "format 1"),
    ('{"format": 1, "registrations": [{"spec": {"url": "http://a:1"}, "workers": []}]}',
     "registrations.0 needs spec and a non-empty workers list"),
    ('{"format": 1, "registrations": [{"spec": {"url": "http://a:1"}, "workers": '
     '[{"url": "http://a:1", "priority": -1}]}]}', "registrations.0: priority"),
])
def test_a_file_that_is_not_a_saved_state_is_refused_naming_the_setting_and_the_place(
        tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "workers.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        StateFile(path).read()
    assert caught.value.key == "admin.state_file"
    assert str(path) in str(caught.value) and says in str(caught.value)


# A writer replacing the state for ever with two different documents, each large enough that
# serialising it takes far longer than a kill's delivery (a writer streaming JSON into the file
# itself is caught mid-document within a few kills: the test was checked against one).
_WRITER = """
import sys
from pathlib import Path
from tests.unit.test_api_state import _saved
from picker.fleet.api_state import StateFile
state, old, new = StateFile(Path(sys.argv[1])), _saved(300, 1), _saved(400, 2)
print("writing", flush=True)
while True:
    state.write(old)
    state.write(new)
"""


def test_a_writer_killed_at_random_moments_leaves_the_old_or_the_new_state(
        tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    rng = random.Random(5)
    found = set()
    for _ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                  stdout=subprocess.PIPE)
        assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        time.sleep(rng.uniform(0.01, 0.25))
        writer.kill()
        writer.wait(5)
        writer.stdout.close()
        saved = StateFile(path).read()  # raises on a broken document
        assert saved in (_saved(300, 1), _saved(400, 2))
        found.add(len(saved))
    assert not [p for p in tmp_path.iterdir() if p.name != "workers.json"
                and not p.name.startswith(".")], "only the state and its temporary file"
    json.loads(path.read_text())
    assert found  # at least one kill landed after a complete write


def test_a_state_file_in_a_directory_that_does_not_exist_is_refused_at_load(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"admin.state_file": str(tmp_path / "nope" / "workers.json")})
    assert caught.value.key == "admin.state_file" and "nope does not exist" in str(caught.value)
