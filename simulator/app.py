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

from simulator import fal, midjourney
from simulator.config import SimulatorConfig
from simulator.guard import Handler, guard
from simulator.lifecycle import Simulator
from simulator.png import gradient_png
from simulator.validation import MODEL_RE, RequestError, parse_create

NOT_FOUND = {"detail": "Not found.", "status": 404}
# What Replicate's GET /v1/account answers (type user|organization, username, name, github_url).
ACCOUNT = {
    "type": "organization",
    "username": "taskhook-simulator",
    "name": "taskhook simulator",
    "github_url": None,
}
THROTTLE_RESET = 30.0
"""Seconds Replicate's 429 says its rate limit needs ("resets in ~30s")."""
RESULT_RETENTION = 3600.0
"""Replicate deletes an API prediction's input and output files an hour after it completes
(https://replicate.com/docs/webhooks)."""
LIST_PAGE = 100
# The ratelimit-* headers every answer carries (the official client's cassettes): creates have
# a budget of 600 a minute, every other call 3,000 (https://replicate.com/docs/topics/
# predictions/rate-limits). The simulator does not count them down.
CREATE_LIMIT = {"ratelimit-remaining": "599", "ratelimit-reset": "1"}
OTHER_LIMIT = {"ratelimit-remaining": "2999", "ratelimit-reset": "1"}
MAX_WAIT = 60
GATEWAY_TIMEOUT = "<html><body><h1>504 Gateway Time-out</h1></body></html>"


def prefer_wait(value: str | None) -> float | None:
    """Seconds a `Prefer: wait` or `Prefer: wait=n` header asks to block; None without one."""
    for part in (value or "").split(","):
        name, _, seconds = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return float(min(MAX_WAIT, max(1, int(seconds)))) if seconds else MAX_WAIT
            except ValueError:
                return MAX_WAIT
    return None


UNAUTHENTICATED = RequestError(
    401, "Unauthenticated", "You did not pass a valid authentication token"
)


def _error(err: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _not_found() -> JSONResponse:
    return JSONResponse(NOT_FOUND, status_code=404)


def throttled(reset: int) -> JSONResponse:
    """Replicate's 429 as it is sent: no Retry-After; the wait is in the body's words and in the
    `ratelimit-*` headers every answer carries (https://replicate.com/docs/topics/predictions/
    rate-limits; header names from the official client's recorded traffic)."""
    return JSONResponse(
        {"detail": f"Request was throttled. Your rate limit resets in ~{reset}s."},
        status_code=429,
        headers={"ratelimit-remaining": "0", "ratelimit-reset": str(reset)},
    )


def _fault_response(status: int, *, reset: int) -> JSONResponse:
    if status == 429:
        return throttled(reset)
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
            fault=lambda status: _fault_response(
                status, reset=max(1, round(config.scaled(THROTTLE_RESET)))
            ),
            error=RequestError,
            render=_error,
            faults=faults,
        )

    def base_url(request: Request) -> str:
        return config.public_url.rstrip("/") or str(request.base_url).rstrip("/")

    async def create(request: Request, model: str | None) -> Response:
        """Both create endpoints. No idempotency: an `Idempotency-Key` header is ignored, as
        Replicate ignores it (its API declares none), so a create sent twice is two jobs.
        `Prefer: wait[=n]` blocks up to n (default 60) seconds for the result, whose files
        then come inline as data: URIs."""
        body = parse_create(await request.body(), model=model, max_outputs=config.max_outputs)
        wait = prefer_wait(request.headers.get("prefer"))
        prediction = await sim.create(
            body,
            base_url=base_url(request),
            retention=RESULT_RETENTION,
            inline_outputs=wait is not None,
        )
        if sim.lose_answer():
            # The job runs (and its webhooks go out); only this answer never arrives.
            return Response(GATEWAY_TIMEOUT, status_code=504, media_type="text/html")
        headers = dict(CREATE_LIMIT)
        if wait is not None:
            await sim.wait_terminal(prediction, timeout=wait)
            headers["preference-applied"] = "wait"
        return JSONResponse(prediction.to_json(), status_code=201, headers=headers)

    @api(faults=True)
    async def create_for_model(request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if not MODEL_RE.fullmatch(model):
            return _not_found()
        return await create(request, model)

    @api(faults=True)
    async def create_for_version(request: Request) -> Response:
        return await create(request, None)

    @api(faults=True)
    async def list_predictions(request: Request) -> Response:
        """Newest first, 100 a page, `next` a cursor URL; only this account's Replicate jobs."""
        jobs = sim.newest_first(sim.replicate)
        try:
            start = int(request.query_params.get("cursor", "0"))
        except ValueError:
            return _error(RequestError(400, "Invalid cursor", "Invalid cursor"))
        page = jobs[start : start + LIST_PAGE]
        after = start + LIST_PAGE
        return JSONResponse(
            {
                "previous": None if start == 0 else page_url(request, max(0, start - LIST_PAGE)),
                "next": page_url(request, after) if after < len(jobs) else None,
                "results": [job.to_list_json() for job in page],
            },
            headers=OTHER_LIMIT,
        )

    @api(faults=True)
    async def get_prediction(request: Request) -> Response:
        prediction = sim.get(request.path_params["prediction_id"])
        if prediction is None or prediction.dialect not in (None, sim.replicate):
            return _not_found()
        sim.stats.fetches[prediction.id] += 1
        return JSONResponse(prediction.to_json(), headers=OTHER_LIMIT)

    @api(faults=True)
    async def cancel_prediction(request: Request) -> Response:
        prediction = sim.get(request.path_params["prediction_id"])
        if prediction is None or prediction.dialect not in (None, sim.replicate):
            return _not_found()
        sim.cancel(prediction.id)
        return JSONResponse(prediction.to_json(), headers=OTHER_LIMIT)

    @api(faults=False)
    async def webhook_secret(request: Request) -> Response:
        return JSONResponse({"key": config.webhook_secret})

    @api(faults=False)
    async def account(request: Request) -> Response:
        """`GET /v1/account`: the token's owner, Replicate's cheapest authenticated call."""
        return JSONResponse(ACCOUNT)

    def page_url(request: Request, cursor: int) -> str:
        return f"{base_url(request)}/v1/predictions?cursor={cursor}"

    async def output_file(request: Request) -> Response:
        prediction = sim.get(request.path_params["prediction_id"])
        index: int = request.path_params["index"]
        if (
            prediction is None
            or prediction.output is None
            or index >= len(prediction.output)
            or prediction.data_removed
        ):
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
            Route("/v1/predictions", list_predictions, methods=["GET"]),
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
