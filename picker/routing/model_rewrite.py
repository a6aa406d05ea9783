"""Model rewrites and canaries: a requested model name sent on as one of several target models,
by weight, in the shape of the Gateway API Inference Extension's InferenceModelRewrite.

GIE's API (apix/v1alpha2/inferencemodelrewrite_types.go at a70292c, lines 47-151, before its
removal in 88fd479): ordered `rules`, each with `matches` (the body's `model`, Exact only; any
match suffices; none matches every request) and weighted `targets` (`modelRewrite`, weight
1..1,000,000, set on all targets or none: none means equal shares). An Exact match takes
precedence over a rule without matches, then list order decides (lines 56-70). Its director
draws a target uniformly over the summed weights (pkg/epp/requestcontrol/director.go:203-238 at
c9332cb) and counts each draw by rule, model and target
(pkg/epp/metrics/metrics.go:389-396, `model_rewrite_decisions_total`).

The `x-gateway-model-name-rewrite` header (llm-d's `x-llm-d-model-name-rewrite` first) names the
target directly; as in GIE's director (director.go:132-139) a rule matching the requested model
still decides over it. Both only choose a model name, which a client could have put in the body
itself, so neither lets a client reach anything it could not already.

`sticky` (this project's addition): a request with a session key (x-session-id or `user`) gets
the target its session hashed to, so one conversation stays on one model while the split holds
over many sessions. The hash is blake2b, not Python's salted `hash`, so replicas agree.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from picker.errors import InvalidRequest
from picker.fleet.worker_spec import MAX_NAME_CHARS
from picker.routing import control_headers
from picker.routing.request import Rewrite, RoutingRequest
from picker.strict import StrictModel

__all__ = ["ModelMatch", "ModelRewriter", "ModelRewriteSettings", "Rewrite", "RewriteRule",
           "RewriteMatch", "RewriteTarget"]

_MAX_WEIGHT = 1_000_000  # GIE's +kubebuilder:validation:Maximum on TargetModel.Weight


class ModelMatch(StrictModel):
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1, max_length=MAX_NAME_CHARS)


class RewriteMatch(StrictModel):
    model: ModelMatch


class RewriteTarget(StrictModel):
    model_rewrite: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    weight: int | None = Field(default=None, ge=1, le=_MAX_WEIGHT)


class RewriteRule(StrictModel):
    # Names the rule in metrics and decision records.
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    matches: list[RewriteMatch] = Field(default_factory=list)
    targets: list[RewriteTarget] = Field(min_length=1)
    sticky: bool = False

    @model_validator(mode="after")
    def _weights_all_or_none(self) -> RewriteRule:
        weighted = [t.weight is not None for t in self.targets]
        if any(weighted) and not all(weighted):
            raise ValueError("targets: set a weight on every target or on none")
        return self


class ModelRewriteSettings(StrictModel):
    """`model_rewrites:` in the configuration; no rules means no rewrite but the header's."""

    rules: list[RewriteRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ModelRewriteSettings:
        names = [rule.name for rule in self.rules]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"rules: the name {duplicate!r} is used twice")
        return self


class _Split:
    """One rule's targets as cumulative weights."""

    __slots__ = ("name", "sticky", "_targets", "_bounds", "_total")

    def __init__(self, rule: RewriteRule) -> None:
        self.name = rule.name
        self.sticky = rule.sticky
        self._targets = [t.model_rewrite for t in rule.targets]
        self._bounds: list[int] = []
        total = 0
        for target in rule.targets:
            total += target.weight or 1
            self._bounds.append(total)
        self._total = total

    def draw(self, rng: random.Random, session: str | None) -> str:
        if self.sticky and session is not None:
            digest = hashlib.blake2b(f"{self.name}\0{session}".encode("utf-8", "surrogatepass"),
                                     digest_size=8).digest()
            point = int.from_bytes(digest, "big") % self._total
        else:
            point = rng.randrange(self._total)
        for target, bound in zip(self._targets, self._bounds, strict=True):
            if point < bound:
                return target
        raise AssertionError("unreachable: point < total")


class ModelRewriter:
    """The rules, indexed by the model they match; `apply` runs on every routed request."""

    def __init__(self, settings: ModelRewriteSettings, rng: random.Random | None = None,
                 count: Callable[[str, str, str], None] | None = None) -> None:
        """`count(rule, model, target)`: told of every rule's draw (the metrics)."""
        self._rng = rng or random.Random()
        self._count = count
        self._exact: dict[str, _Split] = {}
        self._generic: _Split | None = None
        for rule in settings.rules:
            split = _Split(rule)
            if not rule.matches:
                self._generic = self._generic or split  # the first generic rule wins
            for match in rule.matches:
                self._exact.setdefault(match.model.value, split)  # the first rule wins

    def rewrite(self, model: str, headers: Mapping[str, str],
                session: str | None) -> Rewrite | None:
        """The target for a request for `model`, or None to send it on as requested."""
        split = self._exact.get(model, self._generic)
        if split is not None:
            target = split.draw(self._rng, session)
            if self._count is not None:
                self._count(split.name, model, target)
            return Rewrite(model, target, split.name)
        named = control_headers.client_value(headers, control_headers.MODEL_NAME_REWRITE)
        if named is None:
            return None
        if not named or len(named) > MAX_NAME_CHARS:
            raise InvalidRequest(
                f"{control_headers.MODEL_NAME_REWRITE} must be a model name of 1 to "
                f"{MAX_NAME_CHARS} characters", param=control_headers.MODEL_NAME_REWRITE)
        return Rewrite(model, named, None)

    def apply(self, request: RoutingRequest) -> RoutingRequest:
        """The request as routed: for the target model, with the body the engine must get."""
        rewrite = self.rewrite(request.model, request.headers, request.session_key)
        if rewrite is None or rewrite.target == request.model:
            return request
        body = {**(request.body or {}), "model": rewrite.target}
        return replace(request, model=rewrite.target, body=body, rewrite=rewrite)
