"""HTTP routes of the simulator: Replicate's predictions API plus a few ``/_sim`` extras.

Everything under ``/v1`` checks the bearer token (when configured) before anything else
(``GET /v1/account`` answers the token's owner, as Replicate's does);
create, get and cancel then roll the ``error_rate`` dice and may answer 503 or 429 *without*
touching any state, as an overloaded vendor would. Output images live under ``/files`` (public,
like Replicate's delivery CDN) and ``/_sim/stats`` exposes the fault counters and how often each
prediction was fetched (so a benchmark can spot a job polled twice).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vendors.simulator import fal, midjourney
from vendors.simulator.config import SimulatorConfig
from vendors.simulator.guard import Handler, guard
from vendors.simulator.lifecycle import Simulator
from vendors.simulator.png import gradient_png
from vendors.simulator.validation import MODEL_RE, RequestError, parse_create

NOT_FOUND = {"detail": "Not found.", "status": 404}
# What Replicate's GET /v1/account answers (type user|organization, username, name, github_url).
ACCOUNT = {
    "type": "organization",
    "username": "taskhook-simulator",
    "name": "taskhook simulator",
    "github_url": None,
}
UNAUTHENTICATED = RequestError(
    401, "Unauthenticated", "You did not pass a valid authentication token"
)


def _error(err: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _not_found() -> JSONResponse:
    return JSONResponse(NOT_FOUND, status_code=404)


def _fault_response(status: int) -> JSONResponse:
    if status == 429:
        err = RequestError(
            429, "Request was throttled.", "Request was throttled. Expected available in 1 second."
        )
        return _error(err, headers={"retry-after": "1"})
    return _error(
        RequestError(503, "Service Unavailable", "The service is temporarily overloaded.")
    )


@functools.lru_cache(maxsize=256)
def _png(prediction_id: str, index: int, prompt: str) -> bytes:
    return gradient_png(prediction_id, index, prompt)


def create_app(
    config: SimulatorConfig, *, webhook_client: httpx.AsyncClient | None = None
) -> Starlette:
    """Build the simulator app; ``app.state.simulator`` is the :class:`Simulator` behind it.

    ``webhook_client`` lets tests capture webhooks with ``httpx.MockTransport``; it is not
    closed by the app. Without it the lifespan opens (and closes) its own client.
    """
    sim = Simulator(config, webhook_client)

    def authorized(request: Request) -> bool:
        if config.api_token is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Replicate accepts both the current "Bearer" and the legacy "Token" scheme.
        return scheme.lower() in ("bearer", "token") and hmac.compare_digest(
            token.strip().encode(), config.api_token.encode()
        )

    def api(*, faults: bool) -> Callable[[Handler], Handler]:
        """Wrap a /v1 handler with auth, then (optionally) injected 503/429 answers."""
        return guard(
            sim,
            authorized=authorized,
            refused=lambda: _error(UNAUTHENTICATED),
            fault=_fault_response,
            error=RequestError,
            render=_error,
            faults=faults,
        )

    def base_url(request: Request) -> str:
        return config.public_url.rstrip("/") or str(request.base_url).rstrip("/")

    @api(faults=True)
    async def create_for_model(request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if not MODEL_RE.fullmatch(model):
            return _not_found()
        body = parse_create(await request.body(), model=model, max_outputs=config.max_outputs)
        prediction = await sim.create(
            body,
            base_url=base_url(request),
            idempotency_key=request.headers.get("idempotency-key"),
        )
        return JSONResponse(prediction.to_json(), status_code=201)

    @api(faults=True)
    async def create_for_version(request: Request) -> Response:
        body = parse_create(await request.body(), model=None, max_outputs=config.max_outputs)
        prediction = await sim.create(
            body,
            base_url=base_url(request),
            idempotency_key=request.headers.get("idempotency-key"),
        )
        return JSONResponse(prediction.to_json(), status_code=201)

    @api(faults=True)
    async def get_prediction(request: Request) -> Response:
        prediction = sim.get(request.path_params["prediction_id"])
        if prediction is None:
            return _not_found()
        sim.stats.fetches[prediction.id] += 1
        return JSONResponse(prediction.to_json())

    @api(faults=True)
    async def cancel_prediction(request: Request) -> Response:
        prediction = sim.cancel(request.path_params["prediction_id"])
        if prediction is None:
            return _not_found()
        return JSONResponse(prediction.to_json())

    @api(faults=False)
    async def webhook_secret(request: Request) -> Response:
        return JSONResponse({"key": config.webhook_secret})

    @api(faults=False)
    async def account(request: Request) -> Response:
        """`GET /v1/account`: the token's owner, Replicate's cheapest authenticated call."""
        return JSONResponse(ACCOUNT)

    async def output_file(request: Request) -> Response:
        prediction = sim.get(request.path_params["prediction_id"])
        index: int = request.path_params["index"]
        if prediction is None or prediction.output is None or index >= len(prediction.output):
            return _not_found()
        return Response(
            _png(prediction.id, index, prediction.prompt),
            media_type="image/png",
            headers={"cache-control": "public, max-age=3600"},
        )

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats.to_json())

    async def http_error(request: Request, exc: Exception) -> Response:
        """Routing errors (404, 405) as Replicate-style JSON instead of Starlette's text."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _not_found()
        return JSONResponse(
            {"detail": exc.detail, "status": exc.status_code},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.start()
        try:
            yield
        finally:
            await sim.stop()

    app = Starlette(
        routes=[
            Route("/v1/models/{owner}/{name}/predictions", create_for_model, methods=["POST"]),
            Route("/v1/predictions", create_for_version, methods=["POST"]),
            Route("/v1/predictions/{prediction_id}", get_prediction, methods=["GET"]),
            Route("/v1/predictions/{prediction_id}/cancel", cancel_prediction, methods=["POST"]),
            Route("/v1/webhooks/default/secret", webhook_secret, methods=["GET"]),
            Route("/v1/account", account, methods=["GET"]),
            Route("/files/{prediction_id}/{index:int}.png", output_file, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            *fal.routes(sim),
            *midjourney.routes(sim),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
