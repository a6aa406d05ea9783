"""FlowSnapshots: what process 0's status page shows of the other processes' flow queues."""

from __future__ import annotations

import os
import time
from pathlib import Path

from picker.processes.flow_snapshots import FlowSnapshots
from picker.routing.flow import FlowKey, FlowOutcome, FlowRow, FlowStats

CHAT, BULK = FlowKey(10, "chat"), FlowKey(-1, "bulk")


def stats(active: int, *rows: FlowRow) -> FlowStats:
    return FlowStats(rows, active)


def test_the_primary_adds_every_fresh_process_to_its_own(tmp_path: Path) -> None:
    FlowSnapshots(tmp_path, 1, 3).publish(stats(
        2, FlowRow(CHAT, 3, 0.5, {FlowOutcome.DISPATCHED: 4}),
        FlowRow(BULK, 1, 2.0, {FlowOutcome.SHED: 1})))
    FlowSnapshots(tmp_path, 2, 3).publish(stats(1, FlowRow(CHAT, 1, 1.5, {})))
    own = stats(5, FlowRow(CHAT, 2, 0.25, {FlowOutcome.DISPATCHED: 1,
                                           FlowOutcome.TTL_EXPIRED: 2}))
    merged = FlowSnapshots(tmp_path, 0, 3).merged(own)
    assert merged == stats(
        8, FlowRow(CHAT, 6, 1.5, {FlowOutcome.DISPATCHED: 5, FlowOutcome.TTL_EXPIRED: 2}),
        FlowRow(BULK, 1, 2.0, {FlowOutcome.SHED: 1}))


def test_a_stopped_or_unreadable_process_is_left_out(tmp_path: Path) -> None:
    FlowSnapshots(tmp_path, 1, 3).publish(stats(1, FlowRow(CHAT, 3, 0.5, {})))
    stale = time.time() - 60
    os.utime(tmp_path / "flow-1.json", (stale, stale))
    (tmp_path / "flow-2.json").write_text('{"active": 1, "flows": [[10, "chat"')
    own = stats(1, FlowRow(BULK, 1, 0.1, {}))
    assert FlowSnapshots(tmp_path, 0, 3).merged(own) == own
