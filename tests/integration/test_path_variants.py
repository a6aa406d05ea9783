"""`/v1/chat/completions/` (trailing slash) through the real Envoy (issue 30 item 12).

The picker routes it as `/v1/chat/completions` (as llm-d-router's MatchPathSuffix ignores a
trailing slash), and the engine must get the path it serves: vLLM's and SGLang's FastAPI apps
answer the slashed path with a 307 redirect, which OpenAI's SDKs do not follow. The picker
rewrites :path in ext_proc mode; envoy-authz.yaml's route does it in authz mode.
"""

from __future__ import annotations

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import local_fleet
from tests.http_stub import StubServer
from tests.integration.conftest import MODEL
from tests.integration.test_control_headers import CHAT, stubs

__all__ = ["stubs"]  # the fixture, shared with test_control_headers


CASES = [  # (sent, what the engine must receive)
    ("/v1/chat/completions/", "/v1/chat/completions"),
    ("/v1/chat/completions//?api-version=1", "/v1/chat/completions?api-version=1"),
    ("/v1/chat/completions?x=/", "/v1/chat/completions?x=/"),
]


@pytest.mark.parametrize("mode", ["BUFFERED", "FULL_DUPLEX_STREAMED", "authz"])
def test_a_trailing_slash_reaches_the_engine_as_the_path_it_serves(
        mode: str, stubs: tuple[StubServer, StubServer]) -> None:
    engine, _ = stubs
    worker = {"url": engine.url, "id": "engine", "models": [MODEL]}
    with local_fleet([], picker_settings={"workers": [worker]}, authz=mode == "authz",
                     body_mode="BUFFERED" if mode == "authz" else mode) as fleet:
        statuses = [loopback().post(f"{fleet.envoy_url}{sent}", json=CHAT, timeout=10).status_code
                    for sent, _ in CASES]
    assert statuses == [200] * len(CASES)
    assert [path for path, _, _ in engine.posts] == [served for _, served in CASES]


@pytest.mark.parametrize("mode", ["BUFFERED", "FULL_DUPLEX_STREAMED"])
def test_an_engine_gets_the_form_of_an_api_path_the_client_used(
        mode: str, stubs: tuple[StubServer, StubServer]) -> None:
    """vLLM serves rerank at /rerank, /v1/rerank and /v2/rerank, SGLang only at /v1/rerank:
    the picker routes all three as one API and changes none into another."""
    engine, _ = stubs
    worker = {"url": engine.url, "id": "engine", "models": [MODEL]}
    rerank = {"model": MODEL, "query": "q", "documents": ["a"]}
    sent = ["/rerank", "/v2/rerank/", "/v1/rerank", "/score"]
    with local_fleet([], picker_settings={"workers": [worker]}, body_mode=mode) as fleet:
        statuses = [loopback().post(f"{fleet.envoy_url}{path}", timeout=10,
                                    json=rerank if "rerank" in path else
                                    {"model": MODEL, "text_1": "q", "text_2": "a"}).status_code
                    for path in sent]
    assert statuses == [200] * len(sent)
    assert [path for path, _, _ in engine.posts] == ["/rerank", "/v2/rerank", "/v1/rerank",
                                                     "/score"]
