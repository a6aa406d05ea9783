"""SharedBacklog: each worker's prefill backlog, one queue for every process of one picker.

The engine prefills what all the picker's processes sent it in one queue at one rate, so the
processes must not keep a fluid queue each: N queues each drained at the engine's full rate
drain N times too fast. A file-backed mmap (in the group's directory, beside the in-flight
table, with the same columns; a worker's rows side by side, so that one read touches one or two
cache lines) holds per process and worker three 64-bit floats:

- `open`: the uncached prompt tokens of this process's requests there not yet ended. Only this
  process writes it, so the sum over rows is the exact bound of picker.fleet.speed's
  PrefillBacklog, as in-flight counts are summed (picker.processes.counts).
- `tokens`, `at`: the whole picker's fluid queue as this process last wrote it. A process
  sending or ending a request reads the combined backlog (the newest `at` of any row, the
  summed `open`), updates it as a single process would, and writes the result in its own row;
  the newest row is thus the one queue, drained once at the engine's rate.

No lock spans processes. Each cell is one aligned 8-byte store, never seen torn; a reader may
pair a row's new `tokens` with its old `at`, and two processes writing in the same
microseconds each add to the queue without the other's request. Both err by one request's
tokens until the next write, which the open bound and the engine's own waiting count cover.
time.monotonic() is one clock for every process of a host.
"""

from __future__ import annotations

from pathlib import Path

from picker.fleet.speed import PrefillBacklog
from picker.processes.counts import COLUMNS
from picker.processes.table_file import create_table, map_table

__all__ = ["SharedBacklog"]

_CELLS = 3  # open, tokens, at


class SharedBacklog:
    def __init__(self, path: Path, rows: int, row: int, columns: int = COLUMNS) -> None:
        """Map the table at `path` (created and sized by `create`) as process `row`."""
        self._row = row
        self._block = rows * _CELLS  # a column's cells, every row's side by side
        self._cells = map_table(path, columns * self._block).cast("d")

    @staticmethod
    def create(path: Path, rows: int, columns: int = COLUMNS) -> None:
        """The zeroed table file, made once by the supervisor before any process starts."""
        create_table(path, rows * columns * _CELLS)

    def read(self, column: int) -> PrefillBacklog:
        """The backlog of the worker in `column`, as every process together sent it (no peer
        replicas' part: a group has none, picker.processes.group)."""
        cells = self._cells
        open_tokens = tokens = at = 0.0
        for start in range(column * self._block, (column + 1) * self._block, _CELLS):
            open_tokens += cells[start]
            if cells[start + 2] > at:
                tokens, at = cells[start + 1], cells[start + 2]
        return PrefillBacklog(tokens, at, open_tokens)

    def write(self, column: int, backlog: PrefillBacklog, open_change: float) -> None:
        """This process changed the combined backlog into `backlog` by sending (`open_change`
        > 0) or ending (< 0) a request of `abs(open_change)` uncached tokens."""
        cells = self._cells
        start = column * self._block + self._row * _CELLS
        cells[start] = max(0.0, cells[start] + open_change)
        cells[start + 1] = backlog.tokens
        cells[start + 2] = backlog.at
