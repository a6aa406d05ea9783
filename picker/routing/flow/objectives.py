"""Which priority each InferenceObjective name stands for.

From the configuration (`flow.objectives`) and, when Kubernetes discovery follows an
InferencePool, from the cluster's InferenceObjective resources that refer to that pool (their
`spec.priority`, unset meaning 0: gateway-api-inference-extension
apix/v1alpha2/inferenceobjective_types.go, as llm-d-router's copy reads at
apix/v1alpha2/inferenceobjective_types.go:60-73). The cluster's value wins for a name both
define: the resource is what the workload owner maintains. One writer (the Kubernetes source,
through `discovered`), readers on the hot path: the table is replaced whole, never edited.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["Objectives"]


class Objectives:
    def __init__(self, configured: Mapping[str, int]) -> None:
        self._configured = dict(configured)
        self._table: Mapping[str, int] = self._configured

    def priority(self, name: str) -> int:
        """The objective's priority; 0 for a name nobody declared, as llm-d-router's director
        treats an objective it cannot find (pkg/epp/requestcontrol/director.go:222-234)."""
        return self._table.get(name, 0)

    def discovered(self, priorities: Mapping[str, int]) -> None:
        """The cluster's objectives now (all of them: the previous set is replaced)."""
        self._table = {**self._configured, **priorities}
