"""The picker's own requests to prefill workers (SGLang bootstrap and vLLM NIXL two-step).

The client's request goes through the proxy to the decode worker; the prefill request is the
picker's, sent on its event loop with one shared HTTP client, or for a gRPC worker as the same
Generate call the decode worker gets, over one channel per worker (picker.fleet.grpc_calls). A
prefill that cannot start (connection refused, an error status before the two-step's answer)
is a PrefillFailed, so the runtime can choose another pair; an SGLang prefill that fails after
it was dispatched is only counted: its decode worker fails the request when the room never
fills. A two-step answer without `kv_transfer_params` is a healthy engine's (below), not a
failure. An error the engine puts on the request (HTTP 4xx, or the gRPC statuses that map to
one) is the client's: PrefillRejected, no strike on the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import httpx

from picker.errors import PrefillFailed, PrefillRejected
from picker.fleet.grpc_calls import EngineCallFailed, EngineCalls
from picker.fleet.registry import Worker
from picker.fleet.worker_tls import worker_tls
from picker.grpc_route.answer import http_status

__all__ = ["PrefillClient"]

log = logging.getLogger("llm_picker.pd")

# 4xx statuses that say something about the engine (timeout, overload), not the request.
_ENGINE_TROUBLE = frozenset({408, 429})
# How long a dispatched SGLang prefill may take to fail before the pair counts as started: a
# dead engine refuses the connection within milliseconds.
_DISPATCH_WINDOW_SECS = 0.05


class PrefillClient:
    def __init__(self, timeout_secs: float, on_failure: Callable[[Worker], None]) -> None:
        self._timeout = timeout_secs
        self._on_failure = on_failure
        self._client: httpx.AsyncClient | None = None
        self._engines = EngineCalls()  # gRPC prefill workers' channels, opened on first use
        self._background: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        await self._engines.close()

    async def dispatch(self, worker: Worker, path: str, body: Mapping[str, Any],
                       onward: Mapping[str, str]) -> None:
        """Send the SGLang prefill and return once it is under way (its answer is not
        awaited); raises PrefillFailed if it fails at once."""
        await self._under_way(self._post(worker, path, body, onward))

    async def dispatch_generate(self, worker: Worker, call: bytes) -> None:
        """`dispatch` over gRPC: the pair's Generate call (serialized) to the prefill worker,
        its stream read to the end in the background. SMG starts both legs at once and fails
        the request when the prefill's stream cannot start (model_gateway/src/routers/grpc/
        common/stages/request_execution.rs:499-523). It reads the prefill's stream for prompt
        logprobs (regular/streaming.rs:728-742; common/response_collection.rs:39-55), which
        this router does not ask for, so the answer waits on decode's stream alone."""
        await self._under_way(self._generate(worker, call))

    async def _under_way(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` until it is under way: what it raises at once (PrefillFailed,
        PrefillRejected) is raised here; later failures are only logged."""
        task: asyncio.Task[object] = asyncio.create_task(work)
        done, _ = await asyncio.wait({task}, timeout=_DISPATCH_WINDOW_SECS)
        if done:
            task.result()  # raises PrefillFailed
            return
        self._background.add(task)
        task.add_done_callback(self._settled)

    async def kv_transfer_params(self, worker: Worker, path: str, body: Mapping[str, Any],
                                 onward: Mapping[str, str]) -> dict[str, Any] | None:
        """The NIXL two-step's first step: the prefill worker's `kv_transfer_params`, or None
        when its successful answer has none.

        vLLM's NixlConnector returns none for a prefill that did not end by its length cap
        (releases up to 0.11: any other status, nixl_connector.py NixlConnectorScheduler.
        request_finished, `if request.status != RequestStatus.FINISHED_LENGTH_CAPPED: ...
        return False, None`; 0.33.0: besides stopped, e.g. aborted,
        nixl/pull_scheduler.py:235-244). The engine is healthy and its answer is final, so
        vLLM's proxy sends decode the client's request unchanged
        (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py, _handle_completions:
        `if kv_transfer_params: req_data["kv_transfer_params"] = ...`), as llm-d's sidecar
        does (pkg/sidecar/proxy/connector_nixlv2.go:281-284): decode computes the prompt
        itself. No strike on the prefill worker.
        """
        response = await self._post(worker, path, body, onward)
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._on_failure(worker)
            raise PrefillFailed(f"prefill worker {worker.id} answered with no JSON object")
        params = reply.get("kv_transfer_params")
        if not isinstance(params, dict) or not params:
            log.info("prefill worker %s answered without kv_transfer_params: decode computes "
                     "the prompt itself", worker.id)
            return None
        return params

    async def _post(self, worker: Worker, path: str, body: Mapping[str, Any],
                    onward: Mapping[str, str]) -> httpx.Response:
        """POST the prefill with `onward` (the pair's request id, the hop list:
        picker.routing.hops); its body is read whole (an SGLang prefill may stream it)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, verify=worker_tls())
        headers = {"content-type": "application/json", **onward}
        if worker.spec.api_key is not None:
            headers["authorization"] = f"Bearer {worker.spec.api_key.get_secret_value()}"
        try:
            response = await self._client.post(worker.spec.network_url + path,
                                               content=json.dumps(body), headers=headers)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__  # not str(exc): it names the engine's url
        else:
            status = response.status_code
            if status < 400:
                return response
            if status < 500 and status not in _ENGINE_TROUBLE:
                raise PrefillRejected(f"the prefill engine refused the request: "
                                      f"{_engine_message(response)}", status)
            failure = f"HTTP {status}"
        self._on_failure(worker)
        raise PrefillFailed(f"prefill on worker {worker.id} failed: {failure}")

    async def _generate(self, worker: Worker, call: bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                async for _ in self._engines.generate(worker.spec, call):
                    pass
        except EngineCallFailed as exc:
            status = 502 if exc.code is None else http_status(exc.code)
            if 400 <= status < 500 and status not in _ENGINE_TROUBLE:
                raise PrefillRejected("the prefill engine refused the request: "
                                      f"{exc.details or exc.status}", status) from exc
            failure = exc.status or "no gRPC service"  # not str(exc): it names the url
        except TimeoutError:
            failure = f"no answer within {self._timeout}s"
        else:
            return
        self._on_failure(worker)
        raise PrefillFailed(f"prefill on worker {worker.id} failed: {failure}")

    def _settled(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s", task.exception())


def _engine_message(response: httpx.Response) -> str:
    """The error message an engine put in its JSON answer (OpenAI's `error.message`, or a
    FastAPI `detail`), else its status; short, and without the engine's address."""
    try:
        reply = response.json()
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        error = reply.get("error")
        message = error.get("message") if isinstance(error, dict) else reply.get("detail")
        if isinstance(message, str) and message:
            return message[:300]
    return f"HTTP {response.status_code}"
