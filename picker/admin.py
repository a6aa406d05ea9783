"""The admin HTTP API: workers (add, list, inspect, change, drain), probes and metrics.

Every error has one shape, `{"error": {"code", "message", "field"?}}`. Mutating calls need
`Authorization: Bearer <admin.token>` when a token is configured. The OpenAPI document is at
/openapi.json. Secrets never leave: `api_key` is excluded from every worker view.
"""

from __future__ import annotations

import hmac
import ssl
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, SecretStr
from starlette.exceptions import HTTPException

from picker.config import TlsConfig
from picker.discovery import WorkerUnreachable
from picker.errors import UnknownWorker, WorkerConflict
from picker.fleet import WorkerPatch
from picker.registry import Worker
from picker.telemetry import CONTENT_TYPE
from picker.workers import ConnectionMode, WorkerSpec, WorkerType

if TYPE_CHECKING:
    from picker.runtime import PickerRuntime

__all__ = ["admin_tls", "create_admin_app", "worker_view"]

_MUTATION_STATUS = {WorkerConflict: 409, UnknownWorker: 404, WorkerUnreachable: 503}


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status)


def worker_view(worker: Worker) -> dict[str, Any]:
    """The spec as posted (minus secrets) plus live state, ages in seconds."""
    now = time.monotonic()
    engine = worker.engine
    state: dict[str, Any] = {
        "healthy": worker.healthy,
        "routable": worker.routable,
        "draining": worker.draining,
        "in_flight": worker.in_flight,
        "circuit": worker.circuit.snapshot(),
        "last_health_check_age_secs": None if worker.last_health_check is None
        else round(now - worker.last_health_check, 3),
        "engine": None if engine is None else {
            "running": engine.running, "waiting": engine.waiting, "kv_usage": engine.kv_usage,
            "block_size": engine.block_size, "num_gpu_blocks": engine.num_gpu_blocks,
            "age_secs": round(now - engine.scraped_at, 3),
        },
    }
    return {**worker.spec.model_dump(mode="json"), "state": state}


class DrainResult(BaseModel):
    worker: dict[str, Any]
    drained: bool


def create_admin_app(runtime: PickerRuntime, token: SecretStr | None = None) -> FastAPI:
    """The admin API of a running picker; reads and changes go through its runtime."""
    manager, workers = runtime.manager, runtime.registry
    app = FastAPI(title="llm-picker admin", version="0.1.0", docs_url=None, redoc_url=None)

    def require_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise HTTPException(401, "Authorization: Bearer <admin token> required")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            raise HTTPException(403, "admin token rejected")

    mutating = [Depends(require_token)]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())]
        field = ".".join(loc[1:]) if loc and loc[0] in ("body", "query", "path") else ".".join(loc)
        if first.get("type") == "json_invalid":
            return _error(400, "invalid_json", f"body is not valid JSON: {first.get('msg')}")
        return _error(422, "invalid_field", str(first.get("msg", "invalid value")), field or None)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    for error_type, status in _MUTATION_STATUS.items():
        code = {409: "conflict", 404: "unknown_worker", 503: "worker_unreachable"}[status]

        async def handler(_: Request, exc: Exception, status: int = status,
                          code: str = code) -> JSONResponse:
            return _error(status, code, str(exc))

        app.add_exception_handler(error_type, handler)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process answers; says nothing about workers (that is /ready)."""
        return {"status": "unhealthy" if runtime.draining else "healthy",
                "active_requests": runtime.leases.active,
                "max_concurrent_requests": runtime.leases.limit}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: serving (not shutting down) and some worker is routable."""
        routable = sum(1 for w in workers.workers() if w.routable)
        ok = routable > 0 and not runtime.draining
        status = "draining" if runtime.draining else "ready" if routable else "not_ready"
        body = {"status": status, "routable_workers": routable,
                "total_workers": len(workers.workers())}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/workers", status_code=201, dependencies=mutating)
    async def add_worker(spec: WorkerSpec) -> dict[str, Any]:
        """Connect, discover what is missing, register. A DP engine registers one per rank."""
        added = await manager.register(spec)
        if len(added) == 1:
            return worker_view(added[0])
        return {"workers": [worker_view(w) for w in added], "total": len(added)}

    @app.get("/workers")
    async def list_workers(
        model: str | None = None,
        worker_type: WorkerType | None = None,
        connection_mode: ConnectionMode | None = None,
        healthy: bool | None = None,
    ) -> dict[str, Any]:
        chosen = workers.for_model(model) if model else workers.workers()
        chosen = tuple(
            w for w in chosen
            if (worker_type is None or w.spec.worker_type is worker_type)
            and (connection_mode is None or w.spec.connection_mode is connection_mode)
            and (healthy is None or w.healthy is healthy)
        )
        return {"workers": [worker_view(w) for w in chosen], "total": len(chosen),
                "stats": workers.stats()}

    @app.get("/workers/{url:path}")
    async def get_worker(url: str) -> dict[str, Any]:
        return worker_view(manager.find(url))

    @app.patch("/workers/{url:path}", dependencies=mutating)
    async def patch_worker(url: str, patch: WorkerPatch) -> dict[str, Any]:
        return worker_view(manager.patch(manager.find(url), patch))

    @app.delete("/workers/{url:path}", dependencies=mutating)
    async def delete_worker(
        url: str,
        drain_timeout_secs: Annotated[float, Query(ge=0, le=3600)] = 30.0,
    ) -> DrainResult:
        """Drain: no new requests; waits for in-flight ones up to the timeout, then removes."""
        worker = manager.find(url)
        drained = await manager.drain(worker, drain_timeout_secs)
        return DrainResult(worker=worker_view(worker), drained=drained)

    return app


def admin_tls(tls: TlsConfig | None) -> dict[str, Any]:
    """uvicorn's TLS settings for the admin API (client certificates required with a CA)."""
    if tls is None:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": str(tls.cert_file),
                                "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        settings.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return settings
