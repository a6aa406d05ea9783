"""Joining a picker to its peer replicas: picks go out to them and theirs come into the index.

Only an approximate prefix index is shared (a KV-event index follows the engines themselves).
Each pick also carries the prompt tokens the engine was believed not to hold, which peers add
to that engine's prefill backlog (picker.fleet.speed.PrefillBacklog.peer_sent).
Block hashes are Python's salted string hash, so every replica needs the same PYTHONHASHSEED:
refused at start-up otherwise, rather than sharing picks that never match.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from picker.fleet.registry import WorkerRegistry
from picker.observe.metrics import ReplicaMetrics
from picker.prefix.producer import PrefixProducer
from picker.replicas.settings import ReplicaSettings, check_hash_seed

if TYPE_CHECKING:
    from picker.replicas.sharing import PickSharing
    from picker.replicas.wire import Pick

__all__ = ["join_replicas"]


def join_replicas(settings: ReplicaSettings, block_size: int, workers: WorkerRegistry,
                  prefix: PrefixProducer | None, metrics: ReplicaMetrics,
                  loads: bool) -> PickSharing:
    """The pick sharing service (not started) linking `prefix` to the peers `settings` name.
    `loads`: peers' picks grow the prefill backlog (False for the processes of one picker,
    which share theirs in a table: picker.processes.backlog)."""
    check_hash_seed(os.environ)
    from picker.replicas.sharing import PickSharing  # msgspec only when configured

    def apply(pick: Pick) -> bool:
        worker = workers.get(pick.worker)
        if worker is None or prefix is None:
            return False
        prefix.apply(pick, worker)
        if loads and pick.uncached:
            workers.peer_sent_prefill(worker, pick.uncached)
        return True

    sharing = PickSharing(settings, block_size, metrics, apply)
    if prefix is not None:
        prefix.publish_to(sharing.publish)
    return sharing
