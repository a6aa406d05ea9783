"""Flow control's queues in every process of a group, for the status page process 0 serves.

Each process of `serve --workers N` queues on its own (ProcessGroup.share_of_flow), and only
process 0 serves the admin API. So every other process writes its FlowStats to the group
directory every PUBLISH_SECS, and process 0 adds them to its own when the page asks: the page
then shows every process's waiters, as /metrics (prometheus_client's multiprocess files)
already counts them. A follower's oldest wait is advanced by the age of its file; a file
older than a few periods is a process that stopped, and is left out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Any

from picker.processes.group import ProcessGroup
from picker.routing.flow import FlowKey, FlowOutcome, FlowRow, FlowStats, listing_order

__all__ = ["PUBLISH_SECS", "FlowSnapshots"]

_log = logging.getLogger(__name__)

# How often a follower writes its queues: the page polls about as often.
PUBLISH_SECS = 1.0
# Several periods: a process busy for a moment is not dropped from the page.
_STALE_SECS = 5 * PUBLISH_SECS


class FlowSnapshots:
    """One process's side of the exchange: `publish` in a follower, `merged` in process 0."""

    def __init__(self, group: ProcessGroup) -> None:
        self._group = group

    def publish(self, stats: FlowStats) -> None:
        """This process's stats, replacing its previous ones whole (a reader never sees half a
        file)."""
        document = {"at": time.time(), "active": stats.active,
                    "flows": [[row.key.priority, row.key.fairness_id, row.queued,
                               row.oldest_wait_secs, {o.value: n for o, n in row.left.items()}]
                              for row in stats.flows]}
        path = self._group.flow_stats_path(self._group.index)
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
        return FlowStats(tuple(FlowRow(key, queued[key], oldest[key], dict(left[key]))
                               for key in sorted(oldest, key=listing_order)),
                         sum(stats.active for stats in everyone))

    def _others(self) -> list[FlowStats]:
        """The other processes' stats, from fresh files only."""
        now = time.time()
        found: list[FlowStats] = []
        for index in range(self._group.count):
            if index == self._group.index:
                continue
            try:
                document = json.loads(self._group.flow_stats_path(index).read_text())
                age = now - float(document["at"])
                if age <= _STALE_SECS:
                    found.append(_stats(document, max(0.0, age)))
            except FileNotFoundError:
                continue  # not published yet
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                _log.debug("process %d's flow stats unreadable: %s", index, exc)
        return found


def _stats(document: dict[str, Any], age: float) -> FlowStats:
    """A published document as FlowStats, its waiters `age` seconds older than written."""
    return FlowStats(tuple(FlowRow(FlowKey(int(priority), str(flow)), int(queued),
                                   float(oldest) + age if int(queued) else 0.0,
                                   {FlowOutcome(o): int(n) for o, n in left.items()})
                           for priority, flow, queued, oldest, left in document["flows"]),
                     int(document["active"]))
