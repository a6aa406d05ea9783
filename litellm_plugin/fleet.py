"""LiteLLM deployments as picker workers: one worker per engine address (`api_base`).

Deployments are matched by `model_info.id`; several deployments on one engine (one per model
group) share its worker, so its load is counted once. The worker is named by the operator's own
`model_info.id`, or by the engine's host:port when LiteLLM made the id up. Deployments without
an `api_base` (hosted providers) are not engines the picker can reason about and are left to
LiteLLM.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from picker.errors import PickerError
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec, redact_url

__all__ = ["DeploymentFleet", "engine_url"]

log = logging.getLogger("llm_picker.litellm")

# What LiteLLM fills an unset model_info.id with: the sha256 hex digest of the deployment's
# model group and params (Router.generate_model_id, litellm/router.py in 1.106).
_GENERATED_ID = re.compile(r"[0-9a-f]{64}")


def engine_url(api_base: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000`: the engine, whatever API path LiteLLM uses."""
    parts = urlsplit(api_base if "://" in api_base else "http://" + api_base)
    base = f"{parts.scheme}://{parts.netloc}"
    try:
        return WorkerSpec(url=base).url  # the registry's spelling, so lookups by url match
    except ValueError:
        return base  # rejected again, and logged, where the worker is registered


class DeploymentFleet:
    def __init__(self, workers: WorkerRegistry) -> None:
        self.workers = workers
        self._seen: frozenset[tuple[str, ...]] = frozenset()
        self._worker_of: dict[str, str] = {}  # deployment id -> worker id
        # Calls sync on LiteLLM's loop; the proxy also follows its model list from a thread.
        self._lock = threading.Lock()

    def worker_id(self, deployment: Mapping[str, Any]) -> str | None:
        return self._worker_of.get(str(deployment.get("model_info", {}).get("id")))

    def sync(self, deployments: Iterable[Mapping[str, Any]]) -> None:
        """Follow LiteLLM's model list (deployments added, deleted, or updated in place, e.g.
        moved to another api_base); cheap when unchanged."""
        deployments = list(deployments)
        seen = frozenset(_what_matters(d) for d in deployments)
        if seen == self._seen:
            return
        with self._lock:
            self._follow(deployments, seen)

    def _follow(self, deployments: list[Mapping[str, Any]],
                seen: frozenset[tuple[str, ...]]) -> None:
        wanted: dict[str, tuple[set[str], set[str], str | None]] = {}
        for deployment in deployments:
            params = deployment.get("litellm_params", {})
            api_base = params.get("api_base")
            if not api_base:
                continue
            url = engine_url(str(api_base))
            # An empty key (a common placeholder for engines without one) is no key.
            key = params.get("api_key") or None
            models, ids_here, _ = wanted.setdefault(url, (set(), set(), key))
            models.add(str(deployment.get("model_name")))
            ids_here.add(str(deployment.get("model_info", {}).get("id")))
        for worker in self.workers.workers():
            if worker.url not in wanted:
                self.workers.remove(worker.url)
        worker_of: dict[str, str] = {}
        for url, (models, dep_ids, api_key) in wanted.items():
            try:
                spec = WorkerSpec.model_validate({"url": url, "id": _worker_name(dep_ids, url),
                                                  "models": sorted(models), "api_key": api_key})
                existing = self.workers.get_by_url(url)
                if existing is None:
                    worker = self.workers.add(spec)
                else:
                    worker = existing
                    if set(worker.spec.models) != models or _key(worker.spec) != api_key:
                        self.workers.replace_spec(worker, spec.updated(id=worker.id))
            except (PickerError, ValueError) as exc:
                log.warning("deployment at %s not routed by the picker: %s", redact_url(url), exc)
                continue
            for dep_id in dep_ids:
                worker_of[dep_id] = worker.id
        self._worker_of = worker_of
        self._seen = seen


def _worker_name(deployment_ids: set[str], url: str) -> str:
    """The smallest id the operator gave an engine's deployments, else its host:port: a
    generated id is 64 hex digits nobody recognises in an explain line or /debug/decisions."""
    given = sorted(i for i in deployment_ids if not _GENERATED_ID.fullmatch(i))
    return given[0] if given else urlsplit(url).netloc


def _what_matters(deployment: Mapping[str, Any]) -> tuple[str, ...]:
    """What of a deployment its worker depends on."""
    params = deployment.get("litellm_params", {})
    return (str(deployment.get("model_info", {}).get("id")), str(deployment.get("model_name")),
            str(params.get("api_base")), str(params.get("api_key")))


def _key(spec: WorkerSpec) -> str | None:
    return None if spec.api_key is None else spec.api_key.get_secret_value()
