"""What the status page polls (`/debug/status`) and the page's own files.

One JSON document per poll, so the page cannot show workers from one moment and decisions from
another: the workers' live state, the history behind the plots, the policies in force and the
newest decision records (when explain is enabled). Nothing secret is in it: worker views leave
out api keys (the admin API's worker view) and decision records hold no prompt text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from picker.routing.flow import FlowOutcome

if TYPE_CHECKING:
    from picker.config import PickerConfig
    from picker.fleet.registry import Worker, WorkerRegistry
    from picker.observe.decisions import DecisionLog
    from picker.observe.status.history import ActivityHistory
    from picker.routing.flow import FlowStats
    from picker.routing.leases import LeaseBook
    from picker.trace.audit import PredictionAudit

__all__ = ["RECENT_DECISIONS", "StatusSubject", "first_page", "static_file", "status_view"]


class StatusSubject(Protocol):
    """What the status page reads of a running picker (the runtime provides it)."""

    @property
    def config(self) -> PickerConfig: ...
    @property
    def draining(self) -> bool: ...
    registry: WorkerRegistry
    leases: LeaseBook
    history: ActivityHistory
    decisions: DecisionLog | None
    audit: PredictionAudit
    def flow_stats(self) -> FlowStats | None: ...

RECENT_DECISIONS = 20
# The page's files, by the name it is served under, with their media type.
_SCRIPT = '<script src="status/status.js"></script>'
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}


def static_file(name: str) -> tuple[bytes, str] | None:
    """(content, media type) of one of the page's files; None for any other name."""
    media_type = _STATIC.get(name)
    if media_type is None:
        return None
    return (resources.files("picker.observe.status").joinpath("static", name).read_bytes(),
            media_type)


def first_page(status: dict[str, Any]) -> bytes:
    """index.html carrying the status it opens with, so the first paint shows workers (a
    screenshot taken at load showed "loading..." and empty tables until the first poll). The
    JSON sits in a data block; `<` is escaped so no text from the fleet can close the tag."""
    page = resources.files("picker.observe.status").joinpath("static", "index.html").read_text()
    data = json.dumps(status, separators=(",", ":")).replace("<", "\\u003c")
    block = f'<script id="first-status" type="application/json">{data}</script>\n'
    return page.replace(_SCRIPT, block + _SCRIPT, 1).encode()


def status_view(runtime: StatusSubject,
                worker_view: Callable[[Worker], dict[str, Any]]) -> dict[str, Any]:
    """`worker_view`: the admin API's view of a worker, so the page shows what /workers does."""
    workers = runtime.registry.workers()
    config = runtime.config
    log = runtime.decisions
    return {
        "workers": [worker_view(w) for w in workers],
        "stats": runtime.registry.stats(),
        "active_requests": runtime.leases.active,
        "draining": runtime.draining,
        "history": runtime.history.view([w.id for w in workers]),
        "policy": config.policy.name,
        "policies": {name: params.model_dump(mode="json")
                     for name, params in sorted(config.policy_params().items())},
        "explain": {"enabled": log is not None, "allow_header": config.explain.allow_header},
        "audit": runtime.audit.view(),
        "flow": _flow_view(runtime.flow_stats()),
        "decisions": [] if log is None else
        [d.to_dict() for d in log.recent(RECENT_DECISIONS)],
    }


def _flow_view(stats: FlowStats | None) -> dict[str, Any] | None:
    """Flow control's queues, per band (highest first) and flow: who waits, for how long, and
    how requests left them so far (an outcome never seen is 0); None when it is off."""
    if stats is None:
        return None
    return {"active": stats.active,
            "flows": [{"priority": row.key.priority, "flow": row.key.fairness_id,
                       "queued": row.queued,
                       "oldest_wait_secs": round(row.oldest_wait_secs, 3),
                       "left": {outcome.value: row.left.get(outcome, 0)
                                for outcome in FlowOutcome}}
                      for row in stats.flows]}
