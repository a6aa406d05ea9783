"""The admin HTTP API: workers (add, list, inspect, change, drain), probes and metrics,
decision records (/debug/decisions) and the live status page (`/`, polling /debug/status).

Every error has one shape, `{"error": {"code", "message", "field"?}}`, and /openapi.json
documents it with every status each operation can answer (picker.admin.schema). Mutating calls
need `Authorization: Bearer <admin.token>` when a token is configured. Bodies are JSON whatever
their content-type says, and at most MAX_BODY_BYTES. Reads that show state need
`admin.read_token` (or admin.token) when a read token is configured, as a Bearer header or as the
cookie `/?token=...` sets for the status page's own polls; probes (/health, /ready), the
page's static files and /openapi.json stay open. Who may change which worker is WorkerManager's
rule (picker.fleet.manager). Secrets never leave: `api_key` is excluded from every view.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from picker.admin.schema import (
    DecisionList,
    DecisionView,
    DrainResult,
    Health,
    Ready,
    RouterList,
    StatusView,
    WorkerGroup,
    WorkerList,
    WorkerView,
    errors,
)
from picker.errors import ConfigError, UnknownWorker, WorkerConflict
from picker.fleet.manager import DeclaredInFile, WorkerPatch
from picker.fleet.registry import Worker
from picker.fleet.served_models import WorkerUnreachable
from picker.fleet.worker_spec import ConnectionMode, WorkerSpec, WorkerType
from picker.observe.decisions import MAX_CAPACITY, DecisionLog
from picker.observe.metrics import CONTENT_TYPE
from picker.observe.status import StatusSubject, first_page, static_file, status_view
from picker.routing.json_kind import json_type

if TYPE_CHECKING:
    from picker.fleet.manager import WorkerManager
    from picker.observe.metrics import PickerMetrics
    from picker.routing.router_manager import RouterManager

__all__ = ["MAX_BODY_BYTES", "READ_COOKIE", "create_admin_app", "worker_view"]

class AdminSubject(StatusSubject, Protocol):
    """What the admin API reads and changes of a running picker (the runtime provides it)."""

    @property
    def ready(self) -> bool: ...
    @property
    def discovery_synced(self) -> bool: ...
    manager: WorkerManager
    metrics: PickerMetrics
    routers: RouterManager


# Set by `/?token=<token>`: the status page's script polls /debug/status with it, since a page
# loaded by a browser cannot add an Authorization header to its own fetches. Reads only:
# mutations never accept it, so a cross-site form cannot ride on it.
READ_COOKIE = "llm_picker_read_token"

# A worker spec is well under 4 KiB; this leaves room for many labels and models.
MAX_BODY_BYTES = 64 * 1024

# Most specific first: DeclaredInFile is a WorkerConflict.
_MUTATION_ERRORS: dict[type[Exception], tuple[int, str]] = {
    DeclaredInFile: (409, "declared_in_file"),
    WorkerConflict: (409, "conflict"),
    UnknownWorker: (404, "unknown_worker"),
    WorkerUnreachable: (503, "worker_unreachable"),
}


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status)


def worker_view(worker: Worker, declared_in: str | None) -> dict[str, Any]:
    """The spec as posted (minus secrets) plus live state (ages in seconds) and the file that
    owns it (absent: the admin API may change it)."""
    now = time.monotonic()
    engine = worker.engine
    state: dict[str, Any] = {
        "healthy": worker.healthy,
        "routable": worker.routable,
        "draining": worker.draining,
        "in_flight": worker.in_flight,
        "prefill_ahead": round(worker.prefill_ahead(now)),
        "circuit": worker.circuit.snapshot(),
        "last_health_check_age_secs": None if worker.last_health_check is None
        else round(now - worker.last_health_check, 3),
        "engine": None if engine is None else {
            "running": engine.running, "waiting": engine.waiting, "kv_usage": engine.kv_usage,
            "block_size": engine.block_size, "num_gpu_blocks": engine.num_gpu_blocks,
            "lora": None if engine.lora is None else {
                "running": sorted(engine.lora.running), "waiting": sorted(engine.lora.waiting),
                "max_lora": engine.lora.max_loras},
            "age_secs": round(now - engine.scraped_at, 3),
        },
    }
    # Only what is known or set (a spec has ~30 optional fields, nearly all unset on any one
    # worker); routes returning this through a response model exclude None for the same reason.
    view = {**worker.spec.model_dump(mode="json"), "state": state, "declared_in": declared_in}
    return _without_nulls(view)


def _without_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_nulls(v) if isinstance(v, dict) else v
            for k, v in value.items() if v is not None}


class _JsonBodies:
    """Bound request bodies (413 naming the limit) and read every body as JSON.

    `curl -d` sends `application/x-www-form-urlencoded`; the API takes nothing but JSON, so the
    content-type carries no information and is set to JSON before FastAPI parses the body
    (a body that is not JSON then gets the clear 400 invalid_json).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PATCH", "PUT"):
            await self._app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self._limit:
                too_large = _error(413, "body_too_large",
                                   f"the body is over the admin API's limit of {self._limit} "
                                   "bytes")
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        await self._app({**scope, "headers": headers}, replay, send)


def _matches(given: str, tokens: tuple[SecretStr | None, ...]) -> bool:
    """Constant-time comparison against each configured token."""
    found = False
    for token in tokens:
        if token is not None:
            found |= hmac.compare_digest(given.encode(), token.get_secret_value().encode())
    return found


def _bearer(request: Request) -> str | None:
    """The Bearer credential, "" for another scheme, None without the header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def _read_credential(request: Request) -> str | None:
    """What a read presents: the Authorization header's Bearer, else the status page cookie."""
    given = _bearer(request)
    return request.cookies.get(READ_COOKIE) if given is None else given


def create_admin_app(runtime: AdminSubject, token: SecretStr | None = None,
                     read_token: SecretStr | None = None) -> FastAPI:
    """The admin API of a running picker; reads and changes go through its runtime."""
    manager, workers = runtime.manager, runtime.registry
    app = FastAPI(title="llm-picker admin", version="0.1.0", docs_url=None, redoc_url=None)
    app.add_middleware(_JsonBodies)

    def check_read(given: str | None) -> None:
        """401 without a credential, 403 with one that is neither token."""
        if given is None:
            raise HTTPException(401, "Authorization: Bearer <admin read_token or token> "
                                     "required (the status page: open /?token=<token>)")
        if not _matches(given, (read_token, token)):
            raise HTTPException(403, "admin token rejected")

    def require_read_token(request: Request) -> None:
        if read_token is not None:
            check_read(_read_credential(request))

    reading = [Depends(require_read_token)]

    def require_token(request: Request) -> None:
        if token is None:
            return
        given = _bearer(request)
        if not request.headers.get("authorization"):
            raise HTTPException(401, "Authorization: Bearer <admin token> required")
        if not given or not _matches(given, (token,)):
            raise HTTPException(403, "admin token rejected")

    mutating = [Depends(require_token)]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        kind, ctx = first.get("type"), first.get("ctx") or {}
        loc = [str(part) for part in first.get("loc", ())]
        field = ".".join(loc[1:]) if loc and loc[0] in ("body", "query", "path") else ".".join(loc)
        if kind == "json_invalid":
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            return _error(400, "invalid_json",
                          f"body is not valid JSON: {ctx.get('error', first.get('msg'))}{at}")
        if loc == ["body"] and kind == "missing":
            return _error(422, "invalid_field", "a JSON object body is required", "body")
        if loc == ["body"] and kind in ("model_attributes_type", "dict_type"):
            return _error(422, "invalid_field", "body must be a JSON object, not "
                          f"{json_type(first.get('input'))}", "body")
        # A whole-body check (WorkerPatch's fixed fields) names its field in the context.
        field = field or str(ctx.get("field", ""))
        # A validator's own ValueError already says what is wrong: no "Value error, " before it.
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return _error(422, "invalid_field", message, field or None)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when json.loads fails with other than a syntax error: Python
            # refuses integers over 4,300 digits, nesting deeper than its recursion limit and
            # bytes that are not UTF-8.
            return _error(400, "invalid_json", "body is not valid JSON for Python's parser: "
                          "not UTF-8, a number of over 4,300 digits, or nesting too deep")
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(ConfigError)
    async def refused(_: Request, exc: ConfigError) -> JSONResponse:
        """A worker the running picker's settings cannot take (a role without enable_igw, a
        key without mutual TLS on ext_proc): the field it names."""
        return _error(422, "invalid_field", str(exc), exc.key)

    for error_type, (status, code) in _MUTATION_ERRORS.items():
        async def handler(_: Request, exc: Exception, status: int = status,
                          code: str = code) -> JSONResponse:
            return _error(status, code, str(exc))

        app.add_exception_handler(error_type, handler)

    def view(worker: Worker) -> dict[str, Any]:
        return worker_view(worker, manager.declared_in(worker))

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness: the process answers; says nothing about workers (that is /ready)."""
        return {"status": "unhealthy" if runtime.draining else "healthy",
                "active_requests": runtime.leases.active,
                "max_concurrent_requests": runtime.leases.limit}

    @app.get("/ready", response_model=Ready, responses={
        503: {"model": Ready, "description": "Draining, discovery not synced yet, or no "
                     "worker is routable"}})
    async def ready() -> JSONResponse:
        """Readiness: serving (not shutting down), discovery sources synced once, and some
        worker is routable."""
        routable = sum(1 for w in workers.workers() if w.routable)
        synced = runtime.discovery_synced
        ok = runtime.ready
        status = ("draining" if runtime.draining else "syncing" if not synced
                  else "ready" if routable else "not_ready")
        body = {"status": status, "routable_workers": routable,
                "total_workers": len(workers.workers())}
        return JSONResponse(body, status_code=200 if ok else 503)

    # Load balancers' and uptime checkers' probes that send HEAD: the GET's status, no body.
    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:
        return Response(status_code=200)

    @app.head("/ready", include_in_schema=False)
    async def ready_head() -> Response:
        return Response(status_code=(await ready()).status_code)

    @app.get("/routers", response_model=RouterList, dependencies=reading,
             responses=errors(401, 403))
    async def routers() -> dict[str, Any]:
        """The routers in service: one over all workers, or (enable_igw) one per connection
        mode and kind, each appearing with its first worker and retiring with its last."""
        return {"routers": runtime.routers.describe(), "enable_igw": runtime.routers.igw}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=reading,
             responses=errors(401, 403))
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/workers", status_code=201, dependencies=mutating,
              response_model=WorkerView | WorkerGroup, responses={
                  202: {"model": WorkerView | WorkerGroup,
                        "description": "Registered unhealthy: it did not answer yet; health "
                                       "checks admit it once it does"},
                  **errors(400, 401, 403, 409, 413, 422, 503)})
    async def add_worker(spec: WorkerSpec) -> JSONResponse:
        """Check conflicts, discover what is missing, register; a DP engine registers one
        worker per rank. With `models` given, a worker that does not answer yet is registered
        unhealthy (202) instead of being waited for."""
        registered = await manager.register(spec)
        added = registered.workers
        body = view(added[0]) if len(added) == 1 else {
            "workers": [view(w) for w in added], "total": len(added)}
        return JSONResponse(body, status_code=201 if registered.reached else 202)

    @app.get("/workers", response_model=WorkerList, response_model_exclude_none=True,
             dependencies=reading, responses=errors(401, 403, 422))
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
        return {"workers": [view(w) for w in chosen], "total": len(chosen),
                "stats": workers.stats()}

    @app.get("/workers/{url:path}", response_model=WorkerView, response_model_exclude_none=True,
             dependencies=reading, responses=errors(401, 403, 404, 422))
    async def get_worker(url: str) -> dict[str, Any]:
        return view(manager.find(url))

    @app.patch("/workers/{url:path}", dependencies=mutating, response_model=WorkerView,
               response_model_exclude_none=True,
               responses=errors(400, 401, 403, 404, 409, 413, 422))
    async def patch_worker(url: str, patch: WorkerPatch) -> dict[str, Any]:
        """Change priority, cost, labels or health overrides; url, id and models are fixed
        (DELETE and POST again). Workers declared in the configuration file: edit the file."""
        return view(await manager.change(url, patch))

    @app.delete("/workers/{url:path}", dependencies=mutating, response_model=DrainResult,
                responses=errors(401, 403, 404, 409, 422))
    async def delete_worker(
        url: str,
        drain_timeout_secs: Annotated[float, Query(ge=0, le=3600, allow_inf_nan=False)] = 30.0,
    ) -> dict[str, Any]:
        """Drain: no new requests; waits for in-flight ones up to the timeout, then removes."""
        workers, drained = await manager.delete(url, drain_timeout_secs)
        return {"worker": view(workers[0]), "drained": drained,
                "ranks": [view(w) for w in workers] if len(workers) > 1 else None}

    add_status_routes(app, runtime, view, reading, None if read_token is None else check_read)
    return app


def add_status_routes(app: FastAPI, runtime: AdminSubject,
                      view: Callable[[Worker], dict[str, Any]], reading: list[Any],
                      check_read: Callable[[str | None], None] | None) -> None:
    """The status page and the reads behind it; `reading` guards the reads, and with
    `check_read` (a read token is set) `/?token=` hands the page its cookie."""

    def records() -> DecisionLog:
        log = runtime.decisions
        if log is None:
            raise _Disabled()
        return log

    @app.exception_handler(_Disabled)
    async def disabled(_: Request, exc: _Disabled) -> JSONResponse:
        return _error(404, "explain_disabled", "decision records are off: set "
                      "explain.enabled: true (env LLM_PICKER_EXPLAIN__ENABLED=true)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def status_page(request: Request, token: str | None = None) -> Response:
        """With a read token set, `?token=` is checked, kept in a cookie (HttpOnly, this
        site only) and dropped from the address bar by a redirect; without a cookie the page
        says how to get one."""
        if check_read is not None:
            check_read(_read_credential(request) if token is None else token)
        if check_read is None or token is None:
            # The page arrives with its first status, drawn before the first poll.
            return Response(first_page(status_view(runtime, view)),
                            media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})
        redirect = RedirectResponse("./", status_code=303)
        redirect.set_cookie(READ_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return redirect

    @app.get("/status/{name}", include_in_schema=False)
    async def status_asset(name: str) -> Response:
        return _static(name)

    @app.get("/debug/status", response_model=StatusView, dependencies=reading,
             responses=errors(401, 403))
    async def status() -> dict[str, Any]:
        """Everything the status page shows, in one document."""
        return status_view(runtime, view)

    @app.get("/debug/decisions", response_model=DecisionList, dependencies=reading,
             responses=errors(401, 403, 404, 422,
                              s404="Decision records are off (explain.enabled)"))
    async def decisions(
        limit: Annotated[int, Query(ge=1, le=MAX_CAPACITY)] = 50,
        model: str | None = None,
        worker: str | None = None,
    ) -> dict[str, Any]:
        """The newest decisions first, optionally of one model and/or chosen worker."""
        log = records()
        found = log.recent(limit, model, worker)
        return {"decisions": [d.to_dict() for d in found], "total": len(found),
                "capacity": log.settings.capacity}

    @app.get("/debug/decisions/{request_id}", response_model=DecisionView,
             dependencies=reading, responses=errors(
                 401, 403, 404, 422,
                 s404="No record of that request id, or decision records are off"))
    async def decision(request_id: str) -> dict[str, Any] | JSONResponse:
        found = records().find(request_id)
        if found is None:
            return _error(404, "unknown_decision", f"no record of request id "
                          f"{request_id[:100]!r} (only the newest explain.capacity are kept)")
        return found.to_dict()


class _Disabled(Exception):
    """A decision-record read while explain.enabled is off."""


def _static(name: str) -> Response:
    found = static_file(name)
    if found is None:
        raise HTTPException(404, f"no status page file {name[:100]!r}")
    content, media_type = found
    return Response(content, media_type=media_type, headers={"cache-control": "no-cache"})
