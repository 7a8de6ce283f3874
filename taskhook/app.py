"""The web process: client API, webhook receiver, health and metrics, as one Starlette app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import web
from db.migrate import is_current
from receiver.routes import routes as receiver_routes
from submit.routes import routes as submit_routes
from taskhook import queue_metrics
from taskhook.errors import ClientDisconnected, TaskhookError, Unavailable
from taskhook.openapi import openapi_json
from taskhook.runtime import Runtime, open_runtime
from taskhook.settings import Settings

log = structlog.get_logger()


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    try:
        async with rt.pool.acquire(timeout=2) as conn:
            current = await is_current(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
        raise Unavailable("The database is not reachable.") from None
    if not current:
        raise Unavailable("Database migrations are not current; run `taskhook migrate`.")
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    await queue_metrics.refresh(rt.pool)  # collectors are sync: read the queues first
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


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
        async with open_runtime(settings) as rt:
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
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
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
