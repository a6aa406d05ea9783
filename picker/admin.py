"""The admin HTTP API: liveness, readiness and Prometheus metrics of the picker."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from picker.router import Router
from picker.telemetry import CONTENT_TYPE

__all__ = ["create_admin_app"]


def create_admin_app(router: Router) -> Starlette:
    async def health(_: Request) -> JSONResponse:
        """Liveness: the process answers; says nothing about workers (that is /ready)."""
        return JSONResponse({"status": "healthy"})

    async def ready(_: Request) -> JSONResponse:
        """Readiness: traffic sent now can be routed, i.e. some worker is routable."""
        stats = router.workers.stats()
        routable = sum(1 for w in router.workers.workers() if w.routable)
        body = {"status": "ready" if routable else "not_ready", "routable_workers": routable,
                "total_workers": stats["total_workers"]}
        return JSONResponse(body, status_code=200 if routable else 503)

    async def metrics(_: Request) -> Response:
        return Response(router.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
        ]
    )
