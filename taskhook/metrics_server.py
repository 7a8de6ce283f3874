"""Rendering /metrics, on the web port or on a listener of its own (TASKHOOK_METRICS_PORT).

One process, one registry; `taskhook serve --workers N` (prometheus_client's multiprocess mode,
PROMETHEUS_MULTIPROC_DIR set by the serve command before the workers start) renders the sum of
all its processes from their files instead, so whichever process a scrape reaches, the numbers
are the whole web server's and never go backwards. The queue depths are read from PostgreSQL
at each scrape (taskhook/queue_metrics.py) and are the same everywhere.

The listener of its own serves `/metrics` and `/healthz` only, bound where the operator says
(127.0.0.1 by default): the place for Prometheus when the web port faces the internet. In a web
server with several processes each binds it with SO_REUSEPORT and any of them answers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskhook import queue_metrics
from taskhook.serving import bind, running_app, url_for

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def registry() -> CollectorRegistry:
    """This process's registry, or (multiprocess mode) one that sums every process's files."""
    if not multiprocess():
        return REGISTRY
    from prometheus_client import multiprocess as mp

    combined = CollectorRegistry()
    mp.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    combined.register(queue_metrics.COLLECTOR)
    return combined


async def render(pool: asyncpg.Pool[Any]) -> bytes:
    await queue_metrics.refresh(pool)  # collectors are sync: read the queues first
    return generate_latest(registry())


def metrics_app(pool: asyncpg.Pool[Any]) -> Starlette:
    async def metrics(_request: Request) -> Response:
        return Response(await render(pool), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


@asynccontextmanager
async def metrics_listener(
    pool: asyncpg.Pool[Any], *, host: str, port: int, reuse_port: bool = False
) -> AsyncIterator[str]:
    """Serve /metrics on host:port for the duration of the block; yields its URL."""
    sock = bind(host, port, reuse_port=reuse_port)
    async with running_app(metrics_app(pool), sock=sock):
        yield url_for(sock)
