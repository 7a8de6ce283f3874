"""The web process: client API, webhook receiver, health and metrics, as one Starlette app."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

import web
from common.errors import (
    ClientDisconnected,
    NotFound,
    TaskhookError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from common.settings import Settings
from db.migrate import is_current
from lifecycle.runtime import Runtime
from receiver.routes import routes as receiver_routes
from submit.routes import routes as submit_routes
from taskhook import metrics_server
from taskhook.middleware import RequestMiddleware
from taskhook.openapi import openapi_json
from taskhook.runtime import open_runtime

log = structlog.get_logger()

MAX_CHALLENGE = 128


def healthz_proof(secret: str, challenge: str) -> str:
    """What /healthz answers to `?challenge=`: only a process holding this deployment's
    TASKHOOK_SECRET can compute it (`taskhook check` proves its public URL reaches this
    deployment, not merely some server). Keyed by a key of its own, derived from the secret."""
    key = hmac.new(secret.encode(), b"taskhook healthz proof", hashlib.sha256).digest()
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


async def healthz(request: Request) -> JSONResponse:
    challenge = request.query_params.get("challenge")
    if challenge is None:
        return JSONResponse({"status": "ok"})
    if not 0 < len(challenge) <= MAX_CHALLENGE:
        # A query parameter, not a body: the same 422 as every other bad query value.
        raise ValidationFailed(
            details=[{"field": "challenge", "message": f"1 to {MAX_CHALLENGE} characters"}]
        )
    rt: Runtime = request.app.state.runtime
    return JSONResponse({"status": "ok", "proof": healthz_proof(rt.settings.secret, challenge)})


async def readyz(request: Request) -> JSONResponse:
    """503 when this process cannot serve (database, schema). A vendor whose preparation is
    still failing does not make it unready: clients are served and the other vendors' webhooks
    accepted; it is named here (details in /admin) while the process keeps retrying."""
    rt: Runtime = request.app.state.runtime
    try:
        async with rt.pool.acquire(timeout=2) as conn:
            current = await is_current(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
        raise Unavailable("The database is not reachable.") from None
    if not current:
        raise Unavailable("Database migrations are not current; run `taskhook migrate`.")
    vendors = {name: {"ready": r.ready} for name, r in rt.readiness.items()}
    degraded = not all(r.ready for r in rt.readiness.values())
    return JSONResponse({"status": "degraded" if degraded else "ready", "vendors": vendors})


async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    settings = rt.settings
    if not settings.metrics_on_web_port:
        raise NotFound(
            "Metrics are not served on this port: see TASKHOOK_METRICS_PORT and "
            "TASKHOOK_METRICS_TOKEN."
        )
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        matches = hmac.compare_digest(given.strip().encode(), settings.metrics_token.encode())
        if scheme.lower() != "bearer" or not matches:
            raise Unauthorized(
                "The metrics token is required: send `Authorization: Bearer <token>`."
            )
    body = await metrics_server.render(rt.pool)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def taskhook_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TaskhookError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    # The transaction rolled back: nothing was half-written, and the caller may retry.
    log.warning("database_unavailable", error=repr(exc))
    err = Unavailable()
    return JSONResponse(err.body(), status_code=503, headers=err.headers())


async def database_conflict(_request: Request, exc: Exception) -> JSONResponse:
    # SQLSTATE class 40: PostgreSQL chose this transaction to roll back (a deadlock, 40P01, or a
    # serialization failure, 40001). Rows are locked in one order (db/queries.sql, lock_parent)
    # so it should not happen; if it does, nothing was written and a retry will do.
    log.warning("database_conflict", sqlstate=getattr(exc, "sqlstate", None), error=repr(exc))
    err = Unavailable("A concurrent change got in the way; nothing was changed. Retry shortly.")
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers())


async def client_gone(request: Request, _exc: Exception) -> JSONResponse:
    # Not our failure, and the answer reaches nobody: an info line, not unhandled_error.
    log.info("client_disconnected", method=request.method, path=request.url.path)
    err = ClientDisconnected()
    return JSONResponse(err.body(), status_code=err.status_code)


async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", exc_info=exc)
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "Something went wrong on our side."}},
        status_code=500,
    )


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> Starlette:
    """Routes are listed, not decorated. Tests pass a ready `runtime`; processes let the
    lifespan open one (settings must be resolved: database, S3 and public URL known)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            yield
            await runtime.drain()
            return
        async with AsyncExitStack() as stack:
            rt = await stack.enter_async_context(open_runtime(settings))
            if settings.metrics_port is not None:
                # Every process of a `serve --workers N` binds it; any one answers for all.
                await stack.enter_async_context(
                    metrics_server.metrics_listener(
                        rt.pool,
                        host=settings.metrics_host,
                        port=settings.metrics_port,
                        reuse_port=True,
                    )
                )
            app.state.runtime = rt
            yield

    # Webhooks first: most requests are vendors' callbacks, and Starlette tries each route's
    # pattern in order (the others' did show in the receiver's profile under load).
    routes = [
        *receiver_routes,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        *submit_routes,
        *web.routes,
    ]
    app = TaskhookApp(
        routes=routes,
        lifespan=lifespan,
        access_log=settings.access_log,
        exception_handlers={
            TaskhookError: taskhook_error,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
            asyncpg.TransactionRollbackError: database_conflict,
            asyncpg.PostgresConnectionError: database_error,
            asyncpg.InterfaceError: database_error,
            asyncpg.CannotConnectNowError: database_error,
            # A connection the server dropped a moment ago (restart, failover) and asyncpg has
            # not noticed yet: its protocol refuses the next query with InternalClientError.
            asyncpg.InternalClientError: database_error,
            ConnectionError: database_error,
            OSError: database_error,
            Exception: internal_error,
        },
    )
    # Handlers reach the pool, clients and adapters here; tests hand in a ready runtime.
    app.state.runtime = runtime
    return app


class TaskhookApp(Starlette):
    """Starlette, with the request middleware (taskhook/middleware.py) wrapped around
    everything, its error middleware included, so it sees and counts the 500s that renders."""

    def __init__(
        self, *, routes: Sequence[BaseRoute], access_log: bool = False, **options: Any
    ) -> None:
        self._templates = route_templates(routes)
        self._access_log = access_log
        super().__init__(routes=routes, **options)

    def build_middleware_stack(self) -> ASGIApp:
        return RequestMiddleware(
            super().build_middleware_stack(),
            routes=self._templates,
            access_log=self._access_log,
        )


def route_templates(routes: Sequence[BaseRoute]) -> Mapping[Any, str]:
    """Each route's endpoint (as the router leaves it in the scope) → its path template."""
    templates: dict[Any, str] = {}
    for route in routes:
        if isinstance(route, Route):
            templates.setdefault(route.endpoint, route.path)
        elif isinstance(route, Mount):
            templates.setdefault(route.app, route.path + "/{path}")
    return templates
