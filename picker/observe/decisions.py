"""Decision records: why a request went where it went (`explain:` settings).

With `explain.enabled`, every decision - routed or refused - leaves a `Decision` in a bounded
ring buffer that the admin API (/debug/decisions), the status page and the explain response
header read. The record is cheap to take because it is mostly references: per candidate the few
numbers the policy read (in-flight, circuit state, the engine's immutable load scrape, prefill
backlog and speed), the immutable prefix match, and the reason each filtered-out worker was
dropped (only computed when one was). What is derived - workers serving other models, the
reason the winner won, the prefill tokens ahead, JSON, the header line - is computed when
someone reads the record, never on the hot path.

The winner's reason is read off the recorded inputs, not asked of the policy: `best-score` (the
policy scores candidates), `best-prefix` / `load-over-prefix` (the policy reads the prefix index
and the winner had / lacked the best match), `least-load`, `only-candidate`, else `policy` (a
turn, a hash or chance: nothing in the inputs set the winner apart).

No prompt text enters a record: the prefix match is counts of blocks, the request is its id and
model, and workers are their ids (no url, no api key).
"""

from __future__ import annotations

import enum
import itertools
import re
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from pydantic import Field

from picker.fleet.circuit import CircuitState
from picker.fleet.engine_load import EngineLoad
from picker.fleet.registry import Worker
from picker.fleet.speed import PrefillBacklog, SpeedModel
from picker.fleet.worker_spec import WorkerType
from picker.policies import Policy
from picker.prefix.index import PrefixMatch
from picker.routing import control_headers
from picker.routing.request import RoutingRequest
from picker.strict import StrictModel

__all__ = ["EXPLAIN_HEADER", "MAX_CAPACITY", "Decision", "DecisionLog", "Exclusion",
           "ExplainSettings", "FlowRecord", "Scoring", "exclusion", "explain_line"]

# A decision's flow control part: flow id, priority and seconds waited.
FlowRecord = dict[str, str | int | float]
# Request header asking for the explanation (honoured only with explain.allow_header), and the
# response header carrying it.
EXPLAIN_HEADER = control_headers.EXPLAIN
# Model names and request ids are client text: bounded in records so a client cannot grow them.
_MAX_TEXT = 200
# The most records explain.capacity may ask for (~1 KB each with 8 candidates).
MAX_CAPACITY = 100_000
# What a header value may hold of an id; anything else (control characters, `;`) becomes `_`.
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+-]")


class ExplainSettings(StrictModel):
    """`explain:` in the configuration. Off by default: records are cheap, not free."""

    enabled: bool = False
    allow_header: bool = Field(default=False, description=(
        f"Answer a request carrying `{EXPLAIN_HEADER}: 1` with the one-line explanation in "
        "the response header of the same name (needs enabled)"))
    capacity: int = Field(default=1000, ge=1, le=MAX_CAPACITY,
                          description="Decisions kept for /debug/decisions (a ring buffer)")


class Exclusion(enum.StrEnum):
    """Why a registered worker was not a candidate."""

    OTHER_MODEL = "other_model"
    # Serves the model, in another role or connection mode: a prefill engine in the decode
    # router's decision, and so on.
    OTHER_ROLE = "other_role"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    CIRCUIT_OPEN = "circuit_open"
    NOT_ALLOWED = "not_allowed"  # the host ruled it out, e.g. a LiteLLM cooldown
    CAP_REACHED = "cap_reached"  # limits.per_worker_max
    OVERFLOW = "overflow"  # an overflow worker, left alone while the regular ones had room


@runtime_checkable
class Scoring(Protocol):
    """A policy that scores candidates (weighted) says how, for the record."""

    def scores(self, request: RoutingRequest,
               candidates: Sequence[Worker]) -> list[dict[str, float]]: ...


# (worker id, in-flight, circuit state, engine load scrape, prefill backlog, speed) at decision
# time.
_Snapshot = tuple[str, int, CircuitState, EngineLoad | None, PrefillBacklog, SpeedModel]


class Decision:
    """One decision as it happened; read-only, and derived views are computed on read."""

    __slots__ = ("request_id", "model", "policy", "winner", "error", "match", "scores",
                 "at", "role", "partner", "outcome", "rewrite", "flow", "_candidates",
                 "_excluded",
                 "_serving", "_everyone", "_reads_prefix")

    def __init__(self, request_id: str, model: str, policy: str, winner: str | None,
                 error: str | None, candidates: tuple[_Snapshot, ...],
                 excluded: tuple[tuple[str, Exclusion], ...], serving: Collection[Worker],
                 everyone: Sequence[Worker], match: PrefixMatch | None,
                 scores: list[dict[str, float]] | None, reads_prefix: bool,
                 role: str | None = None) -> None:
        """`role`: prefill or decode, for one half of a prefill/decode pair's choice."""
        self.request_id = request_id
        self.model = model
        self.policy = policy
        self.winner = winner
        self.error = error  # the refusal's error code when no worker was chosen
        self.match = match
        self.scores = scores
        self.at = time.monotonic()
        self.role = role
        self.partner: str | None = None  # the pair's other worker, once the pair is chosen
        # (requested model, rule or None for the header) when a model rewrite applied.
        self.rewrite: tuple[str, str | None] | None = None
        # Predicted against observed (picker.trace.audit), once the response has been seen.
        self.outcome: dict[str, float | None] | None = None
        # Flow control's part (picker.routing.flow): the request's flow and band, and how long
        # it waited before dispatch or refusal.
        self.flow: FlowRecord | None = None
        self._candidates = candidates
        self._excluded = excluded
        self._serving = serving
        self._everyone = everyone
        self._reads_prefix = reads_prefix

    @property
    def match_rate(self) -> float | None:
        """The winner's prefix match, 0..1 (None without a prefix index or a winner)."""
        if self.match is None or self.winner is None:
            return None
        return self.match.rate(self.winner)

    @property
    def reason(self) -> str:
        if self.winner is None:
            return self.error or "refused"
        if len(self._candidates) == 1:
            return "only-candidate"
        if self.scores is not None:
            return "best-score"
        match, winner = self.match, self.winner
        if self._reads_prefix and match is not None:
            best = max(match.blocks(c[0]) for c in self._candidates)
            if best:
                return "best-prefix" if match.blocks(winner) == best else "load-over-prefix"
        loads = [c[1] for c in self._candidates]
        mine = next(c[1] for c in self._candidates if c[0] == winner)
        if mine == min(loads) < max(loads):
            return "least-load"
        return "policy"

    def excluded(self) -> list[tuple[str, Exclusion]]:
        """Every registered worker that was not a candidate, and why."""
        serving = {id(w) for w in self._serving}
        others = [(w.id, Exclusion.OTHER_ROLE if w.spec.serves(self.model)
                   else Exclusion.OTHER_MODEL)
                  for w in self._everyone if id(w) not in serving]
        return [*self._excluded, *others]

    def paired_with(self, other: Decision) -> None:
        """The two halves of a prefill/decode pair name each other: a record, or the explain
        line, that showed one engine would hide the other."""
        self.partner, other.partner = other.winner, self.winner

    def waited(self, flow: str, priority: int, waited_secs: float) -> None:
        """Flow control dispatched the request after `waited_secs` in its band's queue."""
        self.flow = {"flow": flow[:_MAX_TEXT], "priority": priority,
                     "waited_secs": round(waited_secs, 4)}

    def audited(self, outcome: dict[str, float | None]) -> None:
        """What the response showed of the predictions (hit and TTFT, predicted and observed),
        set once it ended."""
        self.outcome = outcome

    def header_line(self) -> str:
        """The one line of the explain response header (ids made header-safe)."""
        parts = [f"policy={self.policy}", f"worker={_UNSAFE.sub('_', self.winner or '-')}"]
        if self.role is not None:
            parts.append(f"role={self.role}")
            if self.partner is not None:
                other = "prefill" if self.role == "decode" else "decode"
                parts.append(f"{other}={_UNSAFE.sub('_', self.partner)}")
        rate = self.match_rate
        if rate is not None:
            parts.append(f"match={rate:.2f}")
        parts.append(f"reason={self.reason}")
        return "; ".join(parts)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        match = self.match
        candidates = []
        for i, (worker_id, in_flight, circuit, engine, backlog, speed) in enumerate(
                self._candidates):
            candidates.append({
                "worker": worker_id,
                "in_flight": in_flight,
                "circuit": circuit.value,
                "queue": None if engine is None else engine.waiting,
                "kv_usage": None if engine is None else engine.kv_usage,
                "engine_age_secs": None if engine is None else round(self.at - engine.scraped_at,
                                                                     3),
                "prefill_ahead": round(backlog.left(speed.prefill_tokens_per_sec, self.at)),
                "match": None if match is None else round(match.rate(worker_id), 4),
                "match_blocks": None if match is None else match.blocks(worker_id),
                "scores": None if self.scores is None else
                {k: round(v, 4) for k, v in self.scores[i].items()},
            })
        return {
            "request_id": self.request_id,
            "time": round(time.time() - (now - self.at), 3),
            "age_secs": round(now - self.at, 3),
            "model": self.model,
            "requested_model": None if self.rewrite is None else self.rewrite[0],
            "rewrite_rule": None if self.rewrite is None else self.rewrite[1],
            "policy": self.policy,
            "worker": self.winner,
            "role": self.role,
            "pair": self.partner,
            "error": self.error,
            "reason": self.reason,
            "match": None if self.match_rate is None else round(self.match_rate, 4),
            "prompt_blocks": None if match is None else match.total_blocks,
            "candidates": candidates,
            "excluded": [{"worker": w, "reason": r.value} for w, r in self.excluded()],
            "audit": self.outcome,
            "flow": self.flow,
        }


def exclusion(worker: Worker, allowed: Collection[str] | None) -> Exclusion:
    """Why a worker serving the model was filtered out (it was, or this is not called)."""
    if not worker.healthy:
        return Exclusion.UNHEALTHY
    if worker.draining:
        return Exclusion.DRAINING
    if allowed is not None and worker.id not in allowed:
        return Exclusion.NOT_ALLOWED
    if not worker.routable:
        return Exclusion.CIRCUIT_OPEN
    if worker.spec.overflow:
        return Exclusion.OVERFLOW
    return Exclusion.CAP_REACHED


class DecisionLog:
    """The last `capacity` decisions. Appends are atomic deque operations (no lock on the hot
    path); readers copy the deque, which is atomic too."""

    def __init__(self, settings: ExplainSettings) -> None:
        self.settings = settings
        self._records: deque[Decision] = deque(maxlen=settings.capacity)
        self._ids = itertools.count(1)
        # Whether each policy (by name: one instance per name) scores candidates; asked once,
        # since a runtime_checkable isinstance takes microseconds.
        self._scoring: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._records)

    def record(self, request: RoutingRequest, policy: Policy, reads_prefix: bool,
               serving: Sequence[Worker], candidates: Sequence[Worker],
               everyone: Sequence[Worker], allowed: Collection[str] | None,
               winner: Worker | None, error: str | None = None) -> Decision:
        """Keep the record of one decision; `winner` None is a refusal (`error` its code).
        `serving`: the model's workers; `everyone`: the registry's (for other_model)."""
        excluded: tuple[tuple[str, Exclusion], ...] = ()
        if len(candidates) != len(serving):
            kept = {id(w) for w in candidates}
            excluded = tuple((w.id, exclusion(w, allowed)) for w in serving
                             if id(w) not in kept)
        scoring = self._scoring.get(policy.name)
        if scoring is None:
            scoring = self._scoring[policy.name] = isinstance(policy, Scoring)
        scores = (cast(Scoring, policy).scores(request, candidates)
                  if winner is not None and scoring else None)
        request_id = request.headers.get("x-request-id") or f"picker-{next(self._ids)}"
        roles = {w.spec.worker_type for w in serving}
        role = next(iter(roles)) if len(roles) == 1 else WorkerType.REGULAR
        decision = Decision(
            request_id[:_MAX_TEXT], request.model[:_MAX_TEXT], policy.name,
            None if winner is None else winner.id, error,
            tuple((w.id, w.in_flight, w.circuit.state, w.engine, w.backlog, w.speed)
                  for w in candidates),
            excluded, serving, everyone, request.prefix, scores, reads_prefix,
            None if role is WorkerType.REGULAR else role.value)
        if request.rewrite is not None:
            decision.rewrite = (request.rewrite.requested[:_MAX_TEXT], request.rewrite.rule)
        self._records.append(decision)
        return decision

    def refused_in_flow(self, request: RoutingRequest, flow: str, priority: int, code: str,
                        waited_secs: float) -> Decision:
        """Keep the record of a request flow control refused before any worker was chosen
        (`code`: quota_exceeded, queue_full, shed, ttl_expired, no_ready_worker)."""
        request_id = request.headers.get("x-request-id") or f"picker-{next(self._ids)}"
        decision = Decision(request_id[:_MAX_TEXT], request.model[:_MAX_TEXT], "flow_control",
                            None, code, (), (), (), (), None, None, False)
        decision.waited(flow, priority, waited_secs)
        self._records.append(decision)
        return decision

    def recent(self, limit: int, model: str | None = None,
               worker: str | None = None) -> list[Decision]:
        """The newest first, at most `limit`, optionally of one model and/or winner."""
        found: list[Decision] = []
        for decision in reversed(tuple(self._records)):
            if len(found) >= limit:
                break
            if (model is None or decision.model == model) and \
                    (worker is None or decision.winner == worker):
                found.append(decision)
        return found

    def find(self, request_id: str) -> Decision | None:
        """The newest record of that request id."""
        for decision in reversed(tuple(self._records)):
            if decision.request_id == request_id:
                return decision
        return None


def explain_line(settings: ExplainSettings, request_headers: Mapping[str, str],
                 decision: Decision | None) -> str | None:
    """The explain response header's value, when the operator allows it and the request asked
    for it; None otherwise."""
    if decision is None or not settings.allow_header \
            or request_headers.get(EXPLAIN_HEADER, "").strip() != "1":
        return None
    return decision.header_line()
