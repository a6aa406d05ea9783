"""The simulated engine's rerank and score APIs, in vLLM's shapes.

vLLM serves them at /v1/rerank, /rerank, /v2/rerank, /v1/score and /score
(vllm/entrypoints/pooling/scoring/api_router.py:28-103 at facb56e); a rerank request is
{model, query, documents, top_n}, a score request pairs `queries`/`text_1`/`data_1` with
`documents`/`items`/`text_2`/`data_2` (vllm/entrypoints/pooling/scoring/protocol.py at
004706d). Each (query, document) pair is one prefill on the engine, the query first, so pairs
sharing a query share the sim's prefix cache as they share a cross-encoder's. The score is a
stand-in: the share of words the two texts have in common.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from picker_sim.engine import SimEngine, toy_tokens

__all__ = ["rerank", "score"]


def _texts(value: object) -> list[str]:
    if isinstance(value, list):
        return [item if isinstance(item, str) else json.dumps(item) for item in value]
    return [value if isinstance(value, str) else json.dumps(value)]


def _similarity(query: str, document: str) -> float:
    """Shared words over all words: deterministic, in 0..1 like a relevance score."""
    a, b = set(toy_tokens(query)), set(toy_tokens(document))
    return len(a & b) / len(a | b) if a | b else 0.0


async def _pairs(engine: SimEngine, pairs: list[tuple[str, str]]) -> tuple[list[float], int]:
    """Run each (query, document) pair's prefill; the scores and prompt tokens."""
    tokens = 0
    for query, document in pairs:
        prompt = toy_tokens(f"{query} {document}")
        tokens += len(prompt)
        async with engine.admitted(prompt) as run:
            await run.first_token()
            run.finish()
    return [_similarity(q, d) for q, d in pairs], tokens


async def rerank(engine: SimEngine, body: Mapping[str, Any], reply_id: str,
                 model: str) -> Response:
    query, documents = body.get("query"), body.get("documents")
    if not isinstance(query, str) or not isinstance(documents, list):
        return _bad("need query (string) and documents (array)")
    texts = _texts(documents)
    scores, tokens = await _pairs(engine, [(query, doc) for doc in texts])
    results = sorted(({"index": i, "document": {"text": doc}, "relevance_score": s}
                      for i, (doc, s) in enumerate(zip(texts, scores, strict=True))),
                     key=lambda r: -float(r["relevance_score"]))  # type: ignore[arg-type]
    top_n = body.get("top_n")
    if isinstance(top_n, int) and top_n > 0:
        results = results[:top_n]
    return JSONResponse({"id": reply_id, "model": model, "results": results,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def score(engine: SimEngine, body: Mapping[str, Any], reply_id: str,
                model: str) -> Response:
    first = next((body[k] for k in ("queries", "text_1", "data_1") if k in body), None)
    second = next((body[k] for k in ("documents", "items", "text_2", "data_2") if k in body),
                  None)
    if first is None or second is None:
        return _bad("need queries and documents")
    left, right = _texts(first), _texts(second)
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        return _bad("queries and documents differ in length")
    scores, tokens = await _pairs(engine, list(zip(left, right, strict=True)))
    return JSONResponse({"id": reply_id, "object": "list", "model": model,
                         "data": [{"index": i, "object": "score", "score": s}
                                  for i, s in enumerate(scores)],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _bad(message: str) -> JSONResponse:
    """vLLM's 400 (ErrorResponse: type BadRequestError, code 400)."""
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}},
                        status_code=400)
