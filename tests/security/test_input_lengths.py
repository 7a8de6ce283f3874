"""Issue 14.11: input that used to answer 500 with a traceback answers 4xx.

Every length a client or vendor controls is bounded before it is parsed or stored: numbers
longer than Python will convert (4300 digits) or than a float holds (309 digits), ids longer
than an index row, and a body the client stopped sending.
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from simulator.signing import webhook_headers
from tests.conftest import TEST_WEBHOOK_SECRET, S3Config
from tests.factories import make_task, make_user
from tests.security.conftest import assert_error, auth_header


async def test_a_limit_of_5000_digits_is_422_naming_the_limit(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    r = await app.get("/v1/tasks", params={"limit": "9" * 5000}, headers=await auth_header(runtime))
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"] == [
        {"field": "limit", "message": "an integer from 1 to 100"}
    ]


async def test_an_unauthenticated_replay_of_a_5000_digit_delivery_is_401(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    r = await app.post(f"/admin/api/deliveries/{'9' * 5000}/replay")
    assert_error(r, 401, "unauthorized")
    admin = {"Authorization": f"Bearer {runtime.settings.admin_key}"}
    r = await app.post(f"/admin/api/deliveries/{'9' * 5000}/replay", headers=admin)
    assert_error(r, 404, "not_found")


async def test_a_last_event_id_of_4301_digits_is_422(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    async with runtime.pool.acquire() as conn:
        user_id, key = await make_user(conn, credits=1)
        task_id = await make_task(conn, user_id)
        await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="t")
    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": "9" * 4301}
    r = await app.get(f"/v1/tasks/tsk_{task_id.hex}/events", headers=headers)
    assert_error(r, 422, "validation_error")
    assert r.json()["error"]["details"][0]["field"] == "Last-Event-ID"


async def _hook(runtime: Runtime) -> tuple[uuid.UUID, str]:
    async with runtime.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=1)
        task_id = await make_task(conn, user_id)
    url = runtime.callback_url(task_id=task_id, vendor="replicate")
    return task_id, url.removeprefix("http://testserver")


def _prediction(status: str = "processing") -> bytes:
    body: dict[str, Any] = {"id": "pred1", "status": status, "logs": "", "output": None}
    return json.dumps(body).encode()


async def test_a_signed_webhook_timestamp_of_309_digits_is_400_stale(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    task_id, url = await _hook(runtime)
    body = _prediction()
    for digits in (13, 309, 4000):
        headers = webhook_headers(TEST_WEBHOOK_SECRET, "msg_1", body, timestamp=10 ** (digits - 1))
        r = await app.post(url, content=body, headers=headers)
        assert_error(r, 400, "stale_timestamp")
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
        assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == (
            "pending"
        )


async def test_a_signed_webhook_id_of_3000_characters_is_400_and_stores_nothing(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    task_id, url = await _hook(runtime)
    for body in (_prediction(), b"not json"):  # an applicable body, and a dead letter's
        # Random, so that PostgreSQL cannot compress it under the index's row limit.
        webhook_id = secrets.token_urlsafe(3000)[:3000]
        headers = webhook_headers(TEST_WEBHOOK_SECRET, webhook_id, body)
        r = await app.post(url, content=body, headers=headers)
        assert_error(r, 400, "invalid_payload")
        assert "255" in r.json()["error"]["message"]
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
        assert await conn.fetchval("SELECT status::text FROM tasks WHERE id=$1", task_id) == (
            "pending"
        )
    # The longest id allowed still works.
    headers = webhook_headers(TEST_WEBHOOK_SECRET, "m" * 255, _prediction())
    r = await app.post(url, content=_prediction(), headers=headers)
    assert (r.status_code, r.json()) == (200, {"status": "applied"})


async def _disconnect_mid_body(runtime: Runtime, path: str, headers: dict[str, str]) -> list[Any]:
    """Send part of a declared body, then the client goes away (as uvicorn reports it)."""
    from taskhook.app import create_app

    app = create_app(runtime.settings, runtime=runtime)
    incoming = [
        {"type": "http.request", "body": b'{"model": "a/b", "inp', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*raw, (b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    with capture_logs() as logs:
        await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [400], sent
    return logs


async def test_a_client_disconnecting_mid_body_is_no_500_and_no_unhandled_error(
    app: httpx.AsyncClient, runtime: Runtime
) -> None:
    headers = await auth_header(runtime, credits=5)
    _, hook = await _hook(runtime)
    for path, sent_headers in (("/v1/tasks", headers), (hook, {})):
        logs = await _disconnect_mid_body(runtime, path, sent_headers)
        assert [e for e in logs if e["log_level"] == "error"] == [], logs
        assert [e["event"] for e in logs] == ["client_disconnected"], logs
    assert (await app.get("/v1/me", headers=headers)).json()["credits"] == 5
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


def test_a_fal_signed_timestamp_of_309_digits_is_stale_not_an_overflow() -> None:
    """fal's verifier shares the bounded timestamp check (the key is ours here: a unit check,
    fal's JWKS cannot be served to the app without the simulator)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.errors import TimestampOutOfRange
    from tests.unit.test_fal_signature import BODY, signed
    from vendors.fal import verify_signature

    key = Ed25519PrivateKey.generate()
    for timestamp in ("1" + "0" * 308, "9" * 4301):
        headers = signed(key, timestamp=timestamp)
        with pytest.raises(TimestampOutOfRange):
            verify_signature(BODY, headers, [key.public_key()], now=1e9, tolerance=300)


@pytest.mark.parametrize(("delivery_id", "exit_code"), [("9" * 20, 1), ("0", 1), ("9" * 5000, 2)])
def test_taskhook_deliveries_replay_of_an_impossible_id_is_a_clear_error(
    db_url: str,
    s3: S3Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    delivery_id: str,
    exit_code: int,
) -> None:
    """The CLI twin of the admin API's replay: one line, no traceback."""
    from click.testing import CliRunner

    from taskhook.cli import cli

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TASKHOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TASKHOOK_S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("TASKHOOK_S3_BUCKET", s3.bucket)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", s3.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
    ):
        if value:
            monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["deliveries", "replay", delivery_id])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == exit_code, result.output
    assert ("no delivery" if exit_code == 1 else "not a valid integer") in result.output
