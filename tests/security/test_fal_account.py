"""Issue 14.9: fal webhooks from any fal account.

fal signs every customer's webhooks with one JWKS, so another fal customer who learns one of
our callback URLs could deliver authentic results: `X-Fal-Webhook-User-Id` was signed but
never compared. Now it must be our account: `FAL_USER_ID`, or learned from the first webhook
that names the job we registered and pinned in the database for every process.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from tests.factories import make_task, make_user
from vendors.fal import FalSettings, signed_message

Conn = asyncpg.Connection

FAL_KEY = Ed25519PrivateKey.generate()  # fal's one signing key, for every customer
JWKS_URL = "http://fal.invalid/.well-known/jwks.json"
OURS, THEIRS = "user-ours", "user-someone-else"


def fal_http() -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == JWKS_URL:
            raw = FAL_KEY.public_key().public_bytes_raw()
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            return httpx.Response(200, json={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]})
        raise httpx.ConnectError("no vendor here", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@asynccontextmanager
async def fal_app(
    settings: Settings, *, user_id: str | None = None
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """One web process with fal configured (as its own runtime: a second one is a second
    process sharing the database)."""
    settings = replace(
        settings,
        vendor_settings={
            **settings.vendor_settings,
            "fal": FalSettings(
                api_key="k", queue_base="http://fal.invalid", jwks_url=JWKS_URL, user_id=user_id
            ),
        },
    )
    async with open_runtime(settings, pool_size=2, http=fal_http()) as rt:
        transport = httpx.ASGITransport(app=create_app(settings, runtime=rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield rt, c


async def fal_task(conn: Conn, job: str | None) -> uuid.UUID:
    user_id, _ = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id, vendor="fal", model="fal-ai/flux/schnell")
    if job is not None:
        await transition(
            conn, task_id=task_id, to=TaskStatus.SUBMITTED, event_key="reg", cause="t",
            vendor_task_id=job,
        )  # fmt: skip
    return task_id


async def deliver(
    rt: Runtime, client: httpx.AsyncClient, task_id: uuid.UUID, *, job: str, account: str
) -> httpx.Response:
    """A fal `OK` webhook for `job`, correctly signed with fal's key, from `account`."""
    body = json.dumps(
        {
            "request_id": job,
            "gateway_request_id": job,
            "status": "OK",
            "payload": {"images": [{"url": "https://fal.media/files/x.png"}]},
        }
    ).encode()
    stamp = str(int(time.time()))
    message = signed_message(request_id=job, user_id=account, timestamp=stamp, body=body)
    headers = {
        "content-type": "application/json",
        "x-fal-webhook-request-id": job,
        "x-fal-webhook-user-id": account,
        "x-fal-webhook-timestamp": stamp,
        "x-fal-webhook-signature": FAL_KEY.sign(message).hex(),
    }
    url = rt.callback_url(task_id=task_id, vendor="fal").removeprefix("http://testserver")
    return await client.post(url, content=body, headers=headers)


async def status_of(conn: Conn, task_id: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id))


async def test_a_configured_account_refuses_every_other(settings: Settings, conn: Conn) -> None:
    async with fal_app(settings, user_id=OURS) as (rt, client):
        task_id = await fal_task(conn, "req-ours")
        r = await deliver(rt, client, task_id, job="req-ours", account=THEIRS)
        assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_account"
        assert await status_of(conn, task_id) == "submitted"
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
        r = await deliver(rt, client, task_id, job="req-ours", account=OURS)
        assert (r.status_code, r.json()) == (200, {"status": "applied"})
        assert await status_of(conn, task_id) == "storing"


async def test_the_account_is_learned_from_our_own_job_and_pinned(
    settings: Settings, conn: Conn
) -> None:
    async with fal_app(settings) as (rt, client):
        task_id = await fal_task(conn, "req-ours")
        # a stranger with our callback URL sends their own job first: it teaches nothing
        r = await deliver(rt, client, task_id, job="req-theirs", account=THEIRS)
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert await conn.fetchval("SELECT count(*) FROM vendor_accounts") == 0
        # fal's webhook about the job we registered: learned, pinned, applied
        r = await deliver(rt, client, task_id, job="req-ours", account=OURS)
        assert (r.status_code, r.json()) == (200, {"status": "applied"})
        assert await conn.fetchval("SELECT account_id FROM vendor_accounts") == OURS
        # the stranger again, even naming a job of ours: refused
        other = await fal_task(conn, "req-ours-2")
        r = await deliver(rt, client, other, job="req-ours-2", account=THEIRS)
        assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_account"
        assert await status_of(conn, other) == "submitted"
    # another process, started later, holds to the pinned account
    async with fal_app(settings) as (rt, client):
        r = await deliver(rt, client, other, job="req-ours-2", account=THEIRS)
        assert r.status_code == 401
        r = await deliver(rt, client, other, job="req-ours-2", account=OURS)
        assert r.status_code == 200 and await status_of(conn, other) == "storing"


async def test_an_early_callback_waits_for_the_account_to_be_known(
    settings: Settings, conn: Conn
) -> None:
    """A webhook before registration stored the job id cannot teach the account: 503, the
    vendor retries (and the reconciler polls), nothing is stored."""
    async with fal_app(settings) as (rt, client):
        task_id = await fal_task(conn, None)
        r = await deliver(rt, client, task_id, job="req-early", account=OURS)
        assert r.status_code == 503
        assert await status_of(conn, task_id) == "pending"
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
