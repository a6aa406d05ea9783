"""Flow control's queues in every process of a group, for the status page process 0 serves.

Each process of `serve --workers N` queues on its own (ProcessGroup.share_of_flow), and only
process 0 serves the admin API. So every other process writes its FlowStats to the group
directory about once a second, and process 0 adds them to its own when the page asks: the
page then shows every process's waiters, as /metrics (prometheus_client's multiprocess files)
already counts them. A file not rewritten for `_STALE_SECS` is a process that stopped, and is
left out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from picker.routing.flow import FlowKey, FlowOutcome, FlowRow, FlowStats

__all__ = ["FlowSnapshots"]

_log = logging.getLogger(__name__)

# Several publishing periods: a process busy for a moment is not dropped from the page.
_STALE_SECS = 5.0


class FlowSnapshots:
    def __init__(self, directory: Path, index: int, count: int) -> None:
        self._directory = directory
        self._index = index
        self._count = count

    def _path(self, index: int) -> Path:
        return self._directory / f"flow-{index}.json"

    def publish(self, stats: FlowStats) -> None:
        """This process's stats, replacing its previous ones whole (a reader never sees half a
        file)."""
        document = {"active": stats.active,
                    "flows": [[row.key.priority, row.key.fairness_id, row.queued,
                               row.oldest_wait_secs, {o.value: n for o, n in row.left.items()}]
                              for row in stats.flows]}
        path = self._path(self._index)
        draft = path.with_suffix(".tmp")
        draft.write_text(json.dumps(document, separators=(",", ":")))
        os.replace(draft, path)

    def merged(self, own: FlowStats) -> FlowStats:
        """`own` plus every other process's fresh stats: per flow, the waiters and outcomes
        summed and the longest wait."""
        queued: Counter[FlowKey] = Counter()
        oldest: dict[FlowKey, float] = {}
        left: dict[FlowKey, Counter[FlowOutcome]] = {}
        everyone = [own, *self._others()]
        for stats in everyone:
            for row in stats.flows:
                queued[row.key] += row.queued
                oldest[row.key] = max(oldest.get(row.key, 0.0), row.oldest_wait_secs)
                left.setdefault(row.key, Counter()).update(row.left)
        keys = sorted(oldest, key=lambda key: (-key.priority, key.fairness_id))
        return FlowStats(tuple(FlowRow(key, queued[key], oldest[key], dict(left[key]))
                               for key in keys), sum(stats.active for stats in everyone))

    def _others(self) -> list[FlowStats]:
        """The other processes' stats, from fresh files only."""
        now = time.time()
        found: list[FlowStats] = []
        for index in range(self._count):
            if index == self._index:
                continue
            path = self._path(index)
            try:
                if now - path.stat().st_mtime > _STALE_SECS:
                    continue
                found.append(_stats(json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # not published yet
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.debug("process %d's flow stats unreadable: %s", index, exc)
        return found


def _stats(document: dict[str, Any]) -> FlowStats:
    return FlowStats(tuple(FlowRow(FlowKey(int(priority), str(flow)), int(queued),
                                   float(oldest),
                                   {FlowOutcome(o): int(n) for o, n in left.items()})
                           for priority, flow, queued, oldest, left in document["flows"]),
                     int(document["active"]))
