"""picker.routing.model_list: `GET /v1/models` lists what routable workers serve (item 13)."""

from __future__ import annotations

import json

import pytest

from picker.errors import ModelNotFound
from picker.fleet.circuit import CircuitSettings
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.routing.model_list import model_object, models_path_id


@pytest.mark.parametrize(("path", "model_id"), [
    ("/v1/models", ""), ("/v1/models/", ""), ("/v1/models?x=1", ""),
    ("/v1/models/meta-llama/Llama-3-8B", "meta-llama/Llama-3-8B"),
    # OpenAI's SDKs percent-encode the id (models.retrieve("org/Model-X")).
    ("/v1/models/org%2FModel-X", "org/Model-X"), ("/v1/models/a%20b", "a b"),
    ("/v1/models/%C3%A9-model", "\u00e9-model"),
    ("/v1/chat/completions", None), ("/v1/modelsx", None),
])
def test_models_path_id(path: str, model_id: str | None) -> None:
    assert models_path_id(path) == model_id


def test_only_routable_workers_are_listed() -> None:
    registry = WorkerRegistry([
        WorkerSpec(url="http://a:1", models=["m1", "m2"]),
        WorkerSpec(url="http://b:1", models=["m3"]),
        WorkerSpec(url="http://c:1"),  # any model: nothing to list
    ], CircuitSettings())
    registry.set_healthy(registry.get_by_url("http://b:1"), False)  # type: ignore[arg-type]
    listed = json.loads(model_object(registry.workers(), ""))
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["m1", "m2"]
    assert json.loads(model_object(registry.workers(), "m2"))["id"] == "m2"
    with pytest.raises(ModelNotFound):
        model_object(registry.workers(), "m3")
