"""Table files the processes of one picker share: 8-byte cells in a file-backed mmap.

The supervisor makes each file once, zeroed, before any process starts; every process maps it
and writes only its own cells. Aligned 8-byte stores are single instructions on the platforms
the picker runs on, so a reader never sees a torn value, and no lock spans processes.
"""

from __future__ import annotations

import mmap
from pathlib import Path

__all__ = ["create_table", "map_table"]

_CELL = 8  # bytes: an int64 ("q") or a float64 ("d")


def create_table(path: Path, cells: int) -> None:
    """The zeroed file of `cells` cells."""
    with path.open("wb") as file:
        file.truncate(cells * _CELL)


def map_table(path: Path | None, cells: int) -> memoryview:
    """The bytes of the file at `path` (made by `create_table`) holding `cells` cells, for the
    caller to cast to its cell type; private zeroed memory when `path` is None (a process on
    its own). The view keeps the mapping alive."""
    if path is None:
        return memoryview(mmap.mmap(-1, cells * _CELL))
    with path.open("r+b") as file:
        return memoryview(mmap.mmap(file.fileno(), cells * _CELL))
