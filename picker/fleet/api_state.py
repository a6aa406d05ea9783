"""The admin API's workers on disk (admin.state_file), so that they survive a restart.

The file is one JSON document, replaced whole and never edited in place: the new document is
written to a temporary file in the same directory, fsynced, renamed over the old one (rename(2)
replaces the name atomically within a file system), and the directory is fsynced so the rename
itself is on disk. A picker killed at any instant leaves the old document or the new one; a
temporary file a kill left behind is never read, and the next write overwrites it.

Each registration is saved twice over: the spec as posted (what the manager compares a
configuration file's declaration against) and its workers as registered - discovery's answers
and PATCHes applied - so a restart re-registers them as they were, without waiting for the
engines. The file holds worker api_keys, so it is created readable by this user only (0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from picker.errors import ConfigError
from picker.fleet.worker_spec import WorkerSpec

__all__ = ["SavedRegistration", "StateFile"]

# The document's format; a file of another format is refused at start-up, naming it.
FORMAT = 1
_KEY = "admin.state_file"


@dataclass(frozen=True, slots=True)
class SavedRegistration:
    """One admin API registration: the spec as posted and its workers (one per DP rank)."""

    spec: WorkerSpec
    workers: tuple[WorkerSpec, ...]


class StateFile:
    """Reads and replaces the document at `path`; one writer at a time (the caller's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temporary = path.with_name(f".{path.name}.tmp")

    def read(self) -> list[SavedRegistration]:
        """The saved registrations; none when the file does not exist yet. ConfigError naming
        admin.state_file when it cannot be read or holds anything but a saved state."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(_KEY, f"cannot read {self.path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(_KEY, f"{self.path} is not UTF-8 text") from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(_KEY, f"{self.path} is not JSON: {exc.msg} at line {exc.lineno}"
                              ) from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT \
                or not isinstance(document.get("registrations"), list):
            raise ConfigError(_KEY, f"{self.path} is not a picker state file of format "
                              f"{FORMAT} (an object with format and registrations)")
        return [self._registration(i, entry)
                for i, entry in enumerate(document["registrations"])]

    def write(self, registrations: Sequence[SavedRegistration]) -> None:
        """Replace the document atomically (see the module's docstring); OSError on failure,
        the old document then still in place."""
        data = json.dumps({"format": FORMAT, "registrations": [
            {"spec": _dumped(r.spec), "workers": [_dumped(w) for w in r.workers]}
            for r in registrations]}, indent=1).encode()
        fd = os.open(self._temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _registration(self, index: int, entry: Any) -> SavedRegistration:
        where = f"{self.path}: registrations.{index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("workers"), list) \
                or not entry["workers"]:
            raise ConfigError(_KEY, f"{where} needs spec and a non-empty workers list")
        try:
            return SavedRegistration(WorkerSpec.model_validate(entry.get("spec")), tuple(
                WorkerSpec.model_validate(worker) for worker in entry["workers"]))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ConfigError(_KEY, f"{where}: {field}: {first['msg']}") from exc


def _dumped(spec: WorkerSpec) -> dict[str, Any]:
    """The spec as JSON (what differs from the defaults), its write-only api_key included (the
    reason for the file's mode)."""
    dumped = spec.model_dump(mode="json", exclude_defaults=True)
    if spec.api_key is not None:
        dumped["api_key"] = spec.api_key.get_secret_value()
    return dumped
