"""A line-oriented file that rotates at a size, so a recording can run for ever."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TextIO

__all__ = ["RotatingLines"]


class RotatingLines:
    """Appends lines to `path`; a line that would take it past `max_bytes` first moves it to
    `path.1` (and `path.1` to `path.2` ... `path.<backups>`, the oldest dropped), so the
    recording never holds more than about (backups + 1) x max_bytes. Thread-safe. The file
    is opened at construction, so a path that cannot be written fails there (OSError), not at
    the first line."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self._path = path
        self._max = max_bytes
        self._backups = backups
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._size = 0
        self._open()

    @property
    def path(self) -> Path:
        return self._path

    def write(self, line: str) -> None:
        data = line + "\n"
        size = len(data.encode())
        with self._lock:
            if self._file is None:
                self._open()
            elif self._size and self._size + size > self._max:
                self._rotate()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._size += size

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> None:
        self._file = self._path.open("a", encoding="utf-8")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None  # reopened by the next write if the new file cannot be opened now
        for index in range(self._backups, 0, -1):
            older = self._path if index == 1 else self._path.with_name(
                f"{self._path.name}.{index - 1}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{index}"))
        if self._backups == 0:
            self._path.unlink(missing_ok=True)
        self._open()
