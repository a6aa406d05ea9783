"""Prefill and decode roles for the simulator, speaking what SGLang and vLLM PD engines speak.

Protocols: "sglang" (bootstrap rooms), "nixl" (vLLM kv_transfer_params) and, for decode sims,
"sidecar" (an llm-d routing sidecar in front of a vLLM decode engine: it reads
`x-prefiller-host-port`, runs the NIXL prefill on that worker itself, then decodes).

A prefill sim pays the prompt's prefill cost, answers with one token, and holds what a decode
engine will fetch: the bootstrap rooms it prefilled (SGLang) or a KV handle it returns as
`kv_transfer_params` (vLLM NIXL; none when told its prefill stopped early, as vLLM's connector
answers then). An SGLang decode sim refuses a request without a room (400, as the engine
does); a NIXL decode sim serves a request without kv_transfer_params by computing the prompt
itself, as vLLM does. Otherwise a decode sim waits until its prefill peer has the room or the
handle (bounded: a 503 when it never comes), then decodes without paying prefill.
Both roles report (GET /sim/pd) the PD fields and request id of what they received. Where real
engines move KV over their own side channel (SGLang's bootstrap server, NIXL's), the sims use
the prefill sim's HTTP port: `bootstrap_port` and `remote_port` name it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from picker.pd.protocols import PREFILLER_HEADER, REQUEST_ID_HEADER, nixl_prefill_body
from picker.routing.request import Api

if TYPE_CHECKING:  # imported where used: every simulated engine would pay for it at start-up
    import httpx

__all__ = ["PdPeer"]

_HELD = 100_000  # rooms / handles a prefill sim remembers
_RECEIVED = 1_000  # PD parameters a decode sim remembers, for tests
_POLL_SECS = 0.005
# What a decode sim reports receiving (GET /sim/pd), so tests can check the pair's hand-over.
_PD_FIELDS = frozenset({"bootstrap_host", "bootstrap_port", "bootstrap_room",
                        "kv_transfer_params", "routed_dp_rank", "disagg_prefill_dp_rank",
                        PREFILLER_HEADER, REQUEST_ID_HEADER})


class PdPeer:
    """One sim's PD role: 'prefill' or 'decode', over protocol 'sglang' or 'nixl'."""

    def __init__(self, role: str, protocol: str, worker_id: str, host: str, port: int,
                 wait_secs: float) -> None:
        self.role = role
        self._protocol = protocol
        self._worker_id = worker_id
        self._host, self._port = host, port
        self._wait = wait_secs
        self._held: OrderedDict[str, None] = OrderedDict()
        self._handles = itertools.count(1)
        self.received: list[dict[str, Any]] = []
        self._client: httpx.AsyncClient | None = None

    def routes(self) -> list[Route]:
        return [Route("/sim/pd/held/{key}", self._is_held), Route("/sim/pd", self._report)]

    # -- prefill side ---------------------------------------------------------------------------

    def prefilled(self, body: Mapping[str, Any], headers: Mapping[str, str],
                  by_length: bool) -> dict[str, Any]:
        """Record what was prefilled; returns the fields to add to the answer."""
        self._record(body, headers)
        if self._protocol == "sglang":
            for room in _as_list(body.get("bootstrap_room")):
                self._hold(str(room))
            return {}
        if not by_length:
            return {}
        handle = f"{self._worker_id}-{next(self._handles)}"
        self._hold(handle)
        return {"kv_transfer_params": {
            "do_remote_prefill": True, "do_remote_decode": False,
            "remote_engine_id": self._worker_id, "remote_block_ids": [handle],
            "remote_host": self._host, "remote_port": self._port}}

    def _hold(self, key: str) -> None:
        self._held[key] = None
        while len(self._held) > _HELD:
            self._held.popitem(last=False)

    # -- decode side ----------------------------------------------------------------------------

    async def fetch(self, body: Mapping[str, Any], path: str,
                    headers: Mapping[str, str]) -> Response | bool:
        """Wait for the prefilled KV this request names: True once it is there, False when
        the request names none and the prompt is computed here; an error response if the KV
        cannot be had."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=max(self._wait, 1.0))
        if self._protocol == "sidecar":
            prefiller = headers.get(PREFILLER_HEADER)
            if not prefiller:
                return _error(400, f"the sidecar needs {PREFILLER_HEADER}")
            try:
                answer = await self._client.post(f"http://{prefiller}{path}",
                                                 json=nixl_prefill_body(body, Api(path)))
                answer.raise_for_status()
                params = answer.json().get("kv_transfer_params")
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                return _error(503, f"prefill at {prefiller} failed: {type(exc).__name__}")
            if params:
                body = {**body, "kv_transfer_params": params}
        self._record(body, headers)
        if self._protocol != "sglang" and body.get("kv_transfer_params") is None:
            return False  # vLLM: a plain request, prefilled here
        where = self._where(body)
        if isinstance(where, str):
            return _error(400, where)
        host, port, keys = where
        deadline = time.monotonic() + self._wait
        for key in keys:
            while not await self._peer_holds(host, port, key):
                if time.monotonic() > deadline:
                    return _error(503, f"prefill at {host}:{port} never provided {key}")
                await asyncio.sleep(_POLL_SECS)
        return True

    def _record(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
        self.received.append({key: value for key, value in (*body.items(), *headers.items())
                              if key in _PD_FIELDS})
        del self.received[:-_RECEIVED]

    def _where(self, body: Mapping[str, Any]) -> tuple[str, int, list[str]] | str:
        if self._protocol == "sglang":
            rooms = _as_list(body.get("bootstrap_room"))
            host, port = _first(body.get("bootstrap_host")), _first(body.get("bootstrap_port"))
            if not rooms or not isinstance(host, str) or not isinstance(port, int):
                return "a decode worker needs bootstrap_host, bootstrap_port and bootstrap_room"
            return host, port, [str(room) for room in rooms]
        params = body.get("kv_transfer_params")
        if not isinstance(params, dict) or params.get("do_remote_prefill") is not True:
            return "a decode worker needs kv_transfer_params from a prefill worker"
        host, port, blocks = (params.get("remote_host"), params.get("remote_port"),
                              params.get("remote_block_ids"))
        if not isinstance(host, str) or not isinstance(port, int) or not blocks:
            return "kv_transfer_params lack remote_host, remote_port or remote_block_ids"
        return host, port, [str(block) for block in blocks]

    async def _peer_holds(self, host: str, port: int, key: str) -> bool:
        import httpx

        assert self._client is not None
        try:
            answer = await self._client.get(f"http://{host}:{port}/sim/pd/held/{key}")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    # -- endpoints ------------------------------------------------------------------------------

    async def _is_held(self, request: Request) -> Response:
        return Response(status_code=200 if request.path_params["key"] in self._held else 404)

    async def _report(self, _: Request) -> JSONResponse:
        return JSONResponse({"role": self.role, "protocol": self._protocol,
                             "held": len(self._held), "received": self.received})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"
                                   if status == 400 else "service_unavailable_error",
                                   "code": "pd_bootstrap"}}, status_code=status)
