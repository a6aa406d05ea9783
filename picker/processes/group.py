"""ProcessGroup: where one process of a multi-process picker sits in its group.

The supervisor (`llm-picker serve --workers N`) makes a directory holding the shared in-flight
and quota tables, the prefill backlog table, the registry feed's socket and prometheus_client's
multiprocess files, and hands each process its place through one environment variable. Process
0, the primary, owns everything that changes the fleet (admin API, discovery, health checks,
engine scraping, config reload); the others mirror its registry and only route.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from picker.config import GROUP_ENV, PickerConfig
from picker.errors import ConfigError
from picker.replicas.settings import ReplicaSettings
from picker.routing.admission import LimitSettings
from picker.routing.flow.settings import FlowSettings

__all__ = ["ProcessGroup", "check_group_config"]


def check_group_config(config: PickerConfig) -> None:
    """What a multi-process picker cannot be configured with; ConfigError naming the key.

    Checked by `serve --workers` before it starts anything, and by each process's runtime."""
    if config.replicas is not None:
        raise ConfigError("replicas", "with --workers the processes share picks among "
                          "themselves: run replicas with one process each")


@dataclass(frozen=True)
class ProcessGroup:
    index: int
    count: int
    directory: Path
    # Loopback ports the processes share approximate-index picks on, one per process.
    pick_ports: tuple[int, ...]

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def counts_path(self) -> Path:
        return self.directory / "in_flight"

    @property
    def quotas_path(self) -> Path:
        return self.directory / "quotas"

    @property
    def backlog_path(self) -> Path:
        return self.directory / "prefill_backlog"

    @property
    def feed_path(self) -> Path:
        return self.directory / "registry.sock"

    @property
    def metrics_dir(self) -> Path:
        return self.directory / "metrics"

    def flow_stats_path(self, index: int) -> Path:
        """Where process `index` writes its flow control queues (picker.processes.
        flow_snapshots)."""
        return self.directory / f"flow-{index}.json"

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "count": self.count,
                           "directory": str(self.directory), "pick_ports": self.pick_ports})

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProcessGroup | None:
        text = env.get(GROUP_ENV)
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(int(raw["index"]), int(raw["count"]), Path(raw["directory"]),
                       tuple(int(port) for port in raw["pick_ports"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(GROUP_ENV, f"is set by `llm-picker serve --workers`, not by "
                              f"hand ({exc})") from exc

    def pick_sharing_for(self, config: PickerConfig) -> ReplicaSettings | None:
        """With an approximate prefix index, the group's processes share their picks as
        replicas do; otherwise whatever `replicas:` says."""
        if config.prefix.enabled and config.prefix.index == "approximate":
            return self.pick_sharing()
        return config.replicas

    def pick_sharing(self) -> ReplicaSettings:
        """Share approximate-index picks among the group's processes, as replicas do."""
        peers = [f"127.0.0.1:{port}" for port in self.pick_ports]
        return ReplicaSettings(listen=peers[self.index], peers=peers)

    def share_of(self, limits: LimitSettings) -> LimitSettings:
        """This process's part of the picker-wide admission limits.

        Each process admits and queues on its own (a waiter cannot be woken by another
        process's release), so the limit and queue are split evenly: Envoy spreads streams
        over the processes round-robin, and the sum is the configured limit."""
        if not limits.max_concurrent_requests:
            return limits
        return limits.model_copy(update={
            "max_concurrent_requests": _part(limits.max_concurrent_requests, self.count,
                                             self.index),
            "queue_size": _part(limits.queue_size, self.count, self.index),
        })


    def share_of_flow(self, flow: FlowSettings) -> FlowSettings:
        """This process's part of flow control's queue bounds, split as `share_of` splits the
        limits (each process queues on its own). Quotas are not split: the processes spend
        them in one shared table (picker.routing.flow.quota_table)."""
        return flow.model_copy(update={
            "max_queued": self._part(flow.max_queued),
            "band_max_queued": {band: self._part(bound)
                                for band, bound in flow.band_max_queued.items()},
        })

    def _part(self, total: int) -> int:
        return _part(total, self.count, self.index)


def _part(total: int, count: int, index: int) -> int:
    """`total` split over `count` parts, the first parts taking the remainder; at least 1."""
    share = total // count + (1 if index < total % count else 0)
    return max(share, 1) if total else 0

