"""`GET /v1/models` answered by the picker: many OpenAI clients list models before anything else.

Only models that a routable worker serves are listed, so a client that picks from the list picks
something that can be served now. Workers that accept any model (no `models` configured) add
nothing: there is no name to list for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import unquote

from picker.errors import ModelNotFound
from picker.fleet.registry import Worker

__all__ = ["MODELS_PATH", "model_object", "models_path_id", "served_models"]

MODELS_PATH = "/v1/models"
_OWNER = "llm-picker"


def models_path_id(path: str) -> str | None:
    """'' for the list path, the id for `/v1/models/{id}`, None for any other path."""
    path = path.split("?", 1)[0].rstrip("/")
    if path == MODELS_PATH:
        return ""
    prefix = f"{MODELS_PATH}/"
    # Model ids may hold slashes (`meta-llama/Llama-3-8B`): everything after the prefix,
    # percent-decoded as a path segment is (OpenAI's SDKs send `org%2FModel-X`).
    return unquote(path[len(prefix):]) if path.startswith(prefix) else None


def served_models(workers: Iterable[Worker]) -> list[str]:
    return sorted({model for w in workers if w.routable for model in w.spec.models})


def _entry(model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": _OWNER}


def model_object(workers: Iterable[Worker], model_id: str) -> bytes:
    """The OpenAI JSON for the list (`model_id` empty) or one model; ModelNotFound if unserved."""
    models = served_models(workers)
    if not model_id:
        return json.dumps({"object": "list", "data": [_entry(m) for m in models]}).encode()
    if model_id not in models:
        raise ModelNotFound(f"no routable worker serves model {model_id[:100]!r}", param="model")
    return json.dumps(_entry(model_id)).encode()
