"""FlowSnapshots: what process 0's status page shows of the other processes' flow queues."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from picker.processes.flow_snapshots import FlowSnapshots
from picker.processes.group import ProcessGroup
from picker.routing.flow import FlowKey, FlowOutcome, FlowRow, FlowStats

CHAT, BULK = FlowKey(10, "chat"), FlowKey(-1, "bulk")


def snapshots(directory: Path, index: int) -> FlowSnapshots:
    return FlowSnapshots(ProcessGroup(index, 3, directory, ()))


def stats(active: int, *rows: FlowRow) -> FlowStats:
    return FlowStats(rows, active)


def test_the_primary_adds_every_fresh_process_to_its_own(tmp_path: Path) -> None:
    snapshots(tmp_path, 1).publish(stats(
        2, FlowRow(CHAT, 3, 0.5, {FlowOutcome.DISPATCHED: 4}),
        FlowRow(BULK, 1, 2.0, {FlowOutcome.SHED: 1})))
    snapshots(tmp_path, 2).publish(stats(1, FlowRow(CHAT, 1, 1.5, {})))
    own = stats(5, FlowRow(CHAT, 2, 0.25, {FlowOutcome.DISPATCHED: 1,
                                           FlowOutcome.TTL_EXPIRED: 2}))
    merged = snapshots(tmp_path, 0).merged(own)
    assert merged == stats(
        8, FlowRow(CHAT, 6, pytest.approx(1.5, abs=0.5), {FlowOutcome.DISPATCHED: 5,
                                                           FlowOutcome.TTL_EXPIRED: 2}),
        FlowRow(BULK, 1, pytest.approx(2.0, abs=0.5), {FlowOutcome.SHED: 1}))


def test_a_followers_waiters_age_with_its_file(tmp_path: Path) -> None:
    """Written 3 s ago: its oldest waiter has waited 3 s more since; an empty flow none."""
    document = {"at": time.time() - 3, "active": 0,
                "flows": [[10, "chat", 1, 0.5, {}], [-1, "bulk", 0, 0.0, {"shed": 2}]]}
    ProcessGroup(1, 3, tmp_path, ()).flow_stats_path(1).write_text(json.dumps(document))
    rows = {row.key: row for row in snapshots(tmp_path, 0).merged(stats(0)).flows}
    assert rows[CHAT].oldest_wait_secs == pytest.approx(3.5, abs=0.5)
    assert rows[BULK].oldest_wait_secs == 0.0


@pytest.mark.parametrize("text", [
    '{"at": 0, "active": 1, "flows": [[10, "chat", 3, 0.5, {}]]}',  # written long ago: stopped
    '{"active": 1, "flows": [[10, "chat"',  # torn
    '{"at": 1e12, "active": 1, "flows": [[10, "chat", 3, 0.5, []]]}',  # outcomes not a map
    '[1, 2]',
])
def test_a_stopped_or_unreadable_process_is_left_out(tmp_path: Path, text: str) -> None:
    ProcessGroup(1, 3, tmp_path, ()).flow_stats_path(1).write_text(text)
    own = stats(1, FlowRow(BULK, 1, 0.1, {}))
    assert snapshots(tmp_path, 0).merged(own) == own
