"""SharedCounts: in-flight requests per worker, summed over every process of one picker.

A file-backed mmap (in the group's directory) holds one row of 64-bit counters per process and
one column per worker. A process writes only its own row, under the registry's lock, and a
reader sums the worker's column: load-aware policies in any process see what the whole picker
has in flight, at the cost of `count` memory reads per candidate. Aligned 8-byte stores are
single instructions on the platforms the picker runs on, so a reader never sees a torn value.

Columns are handed out by the primary (it owns the fleet) and named in the registry feed, so
every process agrees on them. A removed worker's column is reused only once its count is zero
in every row: a process may still hold leases on a worker the primary has already removed.
"""

from __future__ import annotations

from pathlib import Path

from picker.processes.table_file import create_table, map_table

__all__ = ["COLUMNS", "SharedCounts"]

# Workers a picker can have registered at once (and removed ones still finishing requests):
# 128 KiB per process.
COLUMNS = 16384


class SharedCounts:
    def __init__(self, path: Path, rows: int, row: int, columns: int = COLUMNS) -> None:
        """Map the table at `path` (created and sized by `create`) as process `row`."""
        self._rows = rows
        self._row = row
        self._columns = columns
        self._cells = map_table(path, rows * columns).cast("q")
        self._next = 0
        self._retired: list[int] = []

    @staticmethod
    def create(path: Path, rows: int, columns: int = COLUMNS) -> None:
        """The zeroed table file, made once by the supervisor before any process starts."""
        create_table(path, rows * columns)

    @property
    def columns(self) -> int:
        return self._columns

    @property
    def allocates(self) -> bool:
        """Only the primary (row 0) hands out columns."""
        return self._row == 0

    def set_own(self, column: int, value: int) -> None:
        """This process's in-flight count on the worker in `column`."""
        self._cells[self._row * self._columns + column] = value

    def total(self, column: int) -> int:
        """In flight on the worker in `column` across every process."""
        return sum(self._cells[column::self._columns])

    def allocate(self) -> int:
        """A column for a newly registered worker (primary only): a fresh one, else a retired
        one nobody holds leases on any more; OverflowError when the table is full."""
        if not self.allocates:
            raise RuntimeError("only the primary process allocates in-flight columns")
        if self._next < self._columns:
            self._next += 1
            return self._next - 1
        for i, column in enumerate(self._retired):
            if self.total(column) == 0:
                del self._retired[i]
                return column
        raise OverflowError(f"more than {self._columns} workers with requests in flight")

    def retire(self, column: int) -> None:
        """The worker in `column` was removed; reuse the column once its requests are done."""
        self._retired.append(column)
