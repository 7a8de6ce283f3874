"""POST /hooks/{vendor}/{token}: every row of API.md's receiver table, over the real app."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from simulator.signing import webhook_headers
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.factories import make_task, make_user

Conn = asyncpg.Connection


def prediction(pid: str = "pred1", status: str = "processing", **extra: Any) -> bytes:
    body = {"id": pid, "status": status, "logs": "", "output": None, "error": None, **extra}
    return json.dumps(body).encode()


async def post_hook(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    secret: str = TEST_WEBHOOK_SECRET,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    hdrs = webhook_headers(
        secret, webhook_id or f"msg_{uuid.uuid4().hex}", body, timestamp=timestamp
    )
    hdrs.update(headers or {})
    return await client.post(url, content=body, headers=hdrs)


@pytest.fixture
async def task(conn: Conn) -> uuid.UUID:
    user_id, _ = await make_user(conn, credits=3)
    return await make_task(conn, user_id)


def hook_url(runtime: Runtime, task_id: uuid.UUID, vendor: str = "replicate") -> str:
    return runtime.callback_url(task_id=task_id, vendor=vendor).removeprefix("http://testserver")


async def status_of(conn: Conn, task_id: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT status::text FROM tasks WHERE id = $1", task_id))


async def deliveries(conn: Conn) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT delivery_id, status FROM webhook_deliveries ORDER BY id")
    return [(r["delivery_id"], r["status"]) for r in rows]


async def test_valid_webhook_is_applied(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    logs = "  50%|█████     | 2/4 [00:00<00:00, 3.1it/s]\n"
    r = await post_hook(client, hook_url(runtime, task), prediction(logs=logs))
    assert (r.status_code, r.json()) == (200, {"status": "applied"})
    row = await conn.fetchrow(
        "SELECT status::text, progress, vendor_task_id FROM tasks WHERE id = $1", task
    )
    assert row is not None
    assert tuple(row) == ("processing", 50, "pred1")


async def test_what_the_official_standardwebhooks_library_signs_is_accepted(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    """Issue 16: the receiver against the Standard Webhooks library Replicate's signatures
    follow, not against our own signer; a body changed after signing is refused."""
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    url, body = hook_url(runtime, task), prediction()
    signed_at = datetime.now(UTC)
    msg_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(TEST_WEBHOOK_SECRET).sign(msg_id, signed_at, body.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": signature,
    }
    tampered = await client.post(url, content=body.replace(b"pred1", b"pred2"), headers=headers)
    assert (tampered.status_code, tampered.json()["error"]["code"]) == (401, "invalid_signature")
    r = await client.post(url, content=body, headers=headers)
    assert (r.status_code, r.json()) == (200, {"status": "applied"})
    assert await status_of(conn, task) == "processing"


async def test_same_delivery_again_is_duplicate(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    url, body = hook_url(runtime, task), prediction()
    first = await post_hook(client, url, body, webhook_id="msg_same")
    again = await post_hook(client, url, body, webhook_id="msg_same")
    assert first.json() == {"status": "applied"}
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await deliveries(conn) == [("msg_same", "accepted")]


async def test_overtaken_transition_is_duplicate(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    url = hook_url(runtime, task)
    done = prediction(status="succeeded", output=["http://files.test/0.png"])
    assert (await post_hook(client, url, done)).json() == {"status": "applied"}
    late = await post_hook(client, url, prediction(status="processing"))
    assert (late.status_code, late.json()) == (200, {"status": "duplicate"})
    assert await status_of(conn, task) == "storing"


async def test_early_callback_before_vendor_id_is_stored(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    assert await conn.fetchval("SELECT vendor_task_id FROM tasks WHERE id=$1", task) is None
    r = await post_hook(client, hook_url(runtime, task), prediction(status="starting"))
    assert r.json() == {"status": "applied"}
    assert await status_of(conn, task) == "submitted"


async def test_failed_webhook_refunds_once(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    url = hook_url(runtime, task)
    for _ in range(2):
        await post_hook(client, url, prediction(status="failed", error="NSFW"))
    refunds = await conn.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE task_id=$1 AND kind='refund'", task
    )
    assert refunds == 1
    error = await conn.fetchval("SELECT error FROM tasks WHERE id=$1", task)
    assert error == {"code": "vendor_failed", "message": "NSFW"}


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-signature": ""},
        {"webhook-signature": "v1,Zm9vYmFy"},
        {"webhook-id": ""},
    ],
)
async def test_bad_signature_is_401_and_changes_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    conn: Conn,
    task: uuid.UUID,
    headers: dict[str, str],
) -> None:
    r = await post_hook(client, hook_url(runtime, task), prediction(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"
    assert await status_of(conn, task) == "pending"
    assert await deliveries(conn) == []


async def test_wrong_secret_is_401(
    client: httpx.AsyncClient, runtime: Runtime, task: uuid.UUID
) -> None:
    r = await post_hook(
        client, hook_url(runtime, task), prediction(), secret="whsec_QUFBQUFBQUFBQUFBQUFBQQ=="
    )
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_signature")


@pytest.mark.parametrize("token", ["garbage", "WyJhYmMiLCJyZXBsaWNhdGUiXQ.bad"])
async def test_invalid_token_is_401(client: httpx.AsyncClient, token: str) -> None:
    r = await post_hook(client, f"/hooks/replicate/{token}", prediction())
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")


async def test_token_for_another_vendor_is_401(
    client: httpx.AsyncClient, runtime: Runtime, task: uuid.UUID
) -> None:
    token = runtime.tokens.issue(task_id=task, vendor="fal")
    r = await post_hook(client, f"/hooks/replicate/{token}", prediction())
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")


async def test_token_signed_with_another_secret_is_401(
    client: httpx.AsyncClient, task: uuid.UUID
) -> None:
    from common.tokens import CallbackTokens

    token = CallbackTokens("someone-else").issue(task_id=task, vendor="replicate")
    r = await post_hook(client, f"/hooks/replicate/{token}", prediction())
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")


@pytest.mark.parametrize("offset", [-301, 301, -3600])
async def test_stale_or_future_timestamp_is_400(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID, offset: int
) -> None:
    r = await post_hook(
        client, hook_url(runtime, task), prediction(), timestamp=int(time.time()) + offset
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "stale_timestamp")
    assert await status_of(conn, task) == "pending"


async def test_non_integer_timestamp_is_400(
    client: httpx.AsyncClient, runtime: Runtime, task: uuid.UUID
) -> None:
    from vendors.signature import decode_secret, sign

    body, stamp = prediction(), f"{time.time():.3f}"
    sig = sign(
        secret=decode_secret(TEST_WEBHOOK_SECRET), delivery_id="msg_x", timestamp=stamp, body=body
    )
    r = await client.post(
        hook_url(runtime, task),
        content=body,
        headers={
            "webhook-id": "msg_x",
            "webhook-timestamp": stamp,
            "webhook-signature": f"v1,{sig}",
        },
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "stale_timestamp")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"status": "succeeded"}',
        b'{"id": "p", "status": "exploded"}',
        b"\xff\xfe",
    ],
)
async def test_malformed_signed_body_is_400_and_kept(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID, body: bytes
) -> None:
    r = await post_hook(client, hook_url(runtime, task), body, webhook_id="msg_bad")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_payload")
    assert await deliveries(conn) == [("msg_bad", "rejected")]
    assert await conn.fetchval("SELECT body FROM webhook_deliveries") == body
    assert await status_of(conn, task) == "pending"


async def test_payload_about_another_job_is_rejected(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    await transition(
        conn,
        task_id=task,
        to=TaskStatus.SUBMITTED,
        event_key="r",
        cause="t",
        vendor_task_id="pred1",
    )
    r = await post_hook(client, hook_url(runtime, task), prediction(pid="other", status="failed"))
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_payload")
    assert await status_of(conn, task) == "submitted"
    assert [s for _, s in await deliveries(conn)] == ["rejected"]


async def test_unknown_vendor_is_404(
    client: httpx.AsyncClient, runtime: Runtime, task: uuid.UUID
) -> None:
    token = runtime.tokens.issue(task_id=task, vendor="nope")
    r = await post_hook(client, f"/hooks/nope/{token}", prediction())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_body_over_one_mib_is_413(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    big = prediction(logs="x" * (1024 * 1024))
    r = await post_hook(client, hook_url(runtime, task), big)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")


async def test_body_over_one_mib_without_length_is_413(
    client: httpx.AsyncClient, runtime: Runtime, task: uuid.UUID
) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 65536

    r = await client.post(
        hook_url(runtime, task),
        content=chunks(),
        headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"},
    )
    assert r.status_code == 413


async def test_rotated_secrets_both_accepted(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    from vendors.replicate import ReplicateAdapter

    new_secret = "whsec_QUFBQUFBQUFBQUFBQUFBQQ=="
    runtime.vendors["replicate"] = ReplicateAdapter(
        runtime.http,
        api_token="t",
        api_base="http://vendor.invalid/v1",
        webhook_secrets=[new_secret, TEST_WEBHOOK_SECRET],
    )
    url = hook_url(runtime, task)
    a = await post_hook(client, url, prediction(status="starting"))
    b = await post_hook(client, url, prediction(status="processing"), secret=new_secret)
    assert [a.json()["status"], b.json()["status"]] == ["applied", "applied"]


async def test_same_webhook_fifty_times_in_parallel(
    client: httpx.AsyncClient, runtime: Runtime, conn: Conn, task: uuid.UUID
) -> None:
    url, body = hook_url(runtime, task), prediction(status="failed", error="boom")
    hdrs = webhook_headers(TEST_WEBHOOK_SECRET, "msg_storm", body)
    responses = await asyncio.gather(
        *(client.post(url, content=body, headers=hdrs) for _ in range(50))
    )
    statuses = sorted(r.json()["status"] for r in responses)
    assert all(r.status_code == 200 for r in responses)
    assert statuses.count("applied") == 1 and statuses.count("duplicate") == 49
    assert (
        await conn.fetchval("SELECT count(*) FROM task_events WHERE task_id=$1 AND applied", task)
        == 1
    )
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM credit_ledger WHERE task_id=$1 AND kind='refund'", task
        )
        == 1
    )
