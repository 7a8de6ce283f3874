"""The client API of the core: submit, read back, credits, and every error shape."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from lifecycle.runtime import Runtime
from tests.factories import make_user

Conn = asyncpg.Connection
BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a red fox"}}


@pytest.fixture
def quiet_registration(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """These tests are about the API; the vendor call after the 202 is recorded, not made."""
    spawned: list[Any] = []

    def record(coro: Any) -> None:
        spawned.append(coro)
        coro.close()

    monkeypatch.setattr(runtime, "spawn", record)
    return spawned


async def user(conn: Conn, credits: int = 5) -> dict[str, str]:
    _, key = await make_user(conn, credits=credits)
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


async def test_submit_answers_202_with_the_task(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: list[Any]
) -> None:
    auth = await user(conn)
    r = await client.post("/v1/tasks", json=BODY, headers=auth)
    assert r.status_code == 202
    task = r.json()
    assert r.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["id"].startswith("tsk_")
    assert {
        k: task[k]
        for k in (
            "status",
            "progress",
            "vendor",
            "model",
            "input",
            "cost",
            "result",
            "error",
            "refunded",
            "completed_at",
        )
    } == {
        "status": "pending",
        "progress": 0,
        "vendor": "replicate",
        "model": BODY["model"],
        "input": BODY["input"],
        "cost": 1,
        "result": None,
        "error": None,
        "refunded": False,
        "completed_at": None,
    }
    assert task["deadline_at"] > task["created_at"]
    assert len(quiet_registration) == 1
    me = (await client.get("/v1/me", headers=auth)).json()
    assert me["credits"] == 4 and me["id"].startswith("usr_")
    got = await client.get(f"/v1/tasks/{task['id']}", headers=auth)
    assert got.status_code == 200 and got.json()["id"] == task["id"]


async def test_charge_and_task_commit_together(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: list[Any]
) -> None:
    auth = await user(conn, credits=2)
    for _ in range(2):
        assert (await client.post("/v1/tasks", json=BODY, headers=auth)).status_code == 202
    assert_error(
        await client.post("/v1/tasks", json=BODY, headers=auth), 402, "insufficient_credits"
    )
    assert await conn.fetchval("SELECT count(*) FROM tasks") == 2
    assert await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind='charge'") == 2
    assert await conn.fetchval("SELECT balance FROM users") == 0


async def test_parallel_submits_never_overdraw(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: list[Any]
) -> None:
    auth = await user(conn, credits=5)
    responses = await asyncio.gather(
        *(client.post("/v1/tasks", json=BODY, headers=auth) for _ in range(12))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 5 + [402] * 7
    assert await conn.fetchval("SELECT balance FROM users") == 0


async def test_idempotency_key_returns_the_same_task_once_charged(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: list[Any]
) -> None:
    auth = {**await user(conn), "Idempotency-Key": "order-42"}
    responses = await asyncio.gather(
        *(client.post("/v1/tasks", json=BODY, headers=auth) for _ in range(5))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind='charge'") == 1
    assert len(quiet_registration) == 1
    other = {**BODY, "input": {"prompt": "something else"}}
    assert_error(
        await client.post("/v1/tasks", json=other, headers=auth), 409, "idempotency_conflict"
    )


async def test_idempotency_key_too_long(client: httpx.AsyncClient, conn: Conn) -> None:
    auth = {**await user(conn), "Idempotency-Key": "k" * 256}
    assert_error(await client.post("/v1/tasks", json=BODY, headers=auth), 422, "validation_error")


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "thk_x"])
async def test_unauthorized(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("POST", "/v1/tasks"),
        ("GET", f"/v1/tasks/tsk_{uuid.uuid4().hex}"),
        ("GET", "/v1/me"),
    ]:
        r = await client.request(method, path, json=BODY, headers=headers)
        assert_error(r, 401, "unauthorized")


async def test_invalid_json(client: httpx.AsyncClient, conn: Conn) -> None:
    auth = {**await user(conn), "Content-Type": "application/json"}
    assert_error(
        await client.post("/v1/tasks", content=b"{nope", headers=auth), 400, "invalid_json"
    )


async def test_wrong_media_type(client: httpx.AsyncClient, conn: Conn) -> None:
    auth = {**await user(conn), "Content-Type": "text/plain"}
    assert_error(
        await client.post("/v1/tasks", content=b"{}", headers=auth), 415, "unsupported_media_type"
    )


async def test_body_too_large(client: httpx.AsyncClient, conn: Conn) -> None:
    auth = await user(conn)
    big = {**BODY, "input": {"prompt": "x" * (1024 * 1024)}}
    assert_error(await client.post("/v1/tasks", json=big, headers=auth), 413, "payload_too_large")
    assert await conn.fetchval("SELECT count(*) FROM tasks") == 0


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ([], [""]),
        ({}, ["model", "input"]),
        ({"model": "", "input": {}}, ["model"]),
        ({"model": "no-slash", "input": {}}, ["model"]),
        ({"model": "a/b", "input": "prompt"}, ["input"]),
        ({"model": "a/b", "input": {}, "vendor": "nope"}, ["vendor"]),
        ({"model": "a/b", "input": {}, "colour": "red"}, ["colour"]),
    ],
)
async def test_validation_errors_list_every_field(
    client: httpx.AsyncClient, conn: Conn, body: Any, fields: list[str]
) -> None:
    auth = await user(conn)
    r = await client.post("/v1/tasks", json=body, headers=auth)
    details = assert_error(r, 422, "validation_error")["error"]["details"]
    assert sorted(d["field"] for d in details) == sorted(fields)
    assert await conn.fetchval("SELECT balance FROM users") == 5


async def test_other_users_task_is_404(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: list[Any]
) -> None:
    alice, bob = await user(conn), await user(conn)
    task_id = (await client.post("/v1/tasks", json=BODY, headers=alice)).json()["id"]
    assert_error(await client.get(f"/v1/tasks/{task_id}", headers=bob), 404, "not_found")
    for missing in ["tsk_nothex", f"tsk_{uuid.uuid4().hex}", "123"]:
        assert_error(await client.get(f"/v1/tasks/{missing}", headers=alice), 404, "not_found")


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing"), 404, "not_found")
    assert_error(await client.delete("/v1/me"), 405, "method_not_allowed")


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {
        "status": "ready",
        "vendors": {"replicate": {"ready": True}},
    }
    metrics = await client.get("/metrics")
    assert "taskhook_webhooks_total" in metrics.text


async def test_database_down_is_503_json(
    client: httpx.AsyncClient, conn: Conn, runtime: Runtime, server_dsn: str
) -> None:
    auth = await user(conn)
    await runtime.pool.close()  # every new acquire fails as if the server were gone
    r = await client.get("/v1/me", headers=auth)
    assert_error(r, 503, "unavailable")


@pytest.mark.parametrize(
    "task_input",
    [
        '{"prompt": "a\\u0000b"}',
        '{"a\\u0000": 1}',
        '{"prompt": "\\ud800"}',
        '{"x": NaN}',
        '{"x": 1e400}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
async def test_json_postgres_cannot_store_is_400(
    client: httpx.AsyncClient, conn: Conn, task_input: str
) -> None:
    """Found by schemathesis: these reached the database and came back as 500s."""
    auth = {**await user(conn), "Content-Type": "application/json"}
    body = '{"model": "black-forest-labs/flux-schnell", "input": ' + task_input + "}"
    assert_error(await client.post("/v1/tasks", content=body, headers=auth), 400, "invalid_json")
    assert await conn.fetchval("SELECT balance FROM users") == 5


async def test_explicit_null_vendor_is_422(client: httpx.AsyncClient, conn: Conn) -> None:
    """Found by schemathesis: an explicit null vendor answered 503 'no vendor configured'."""
    r = await client.post("/v1/tasks", json={**BODY, "vendor": None}, headers=await user(conn))
    details = assert_error(r, 422, "validation_error")["error"]["details"]
    assert [d["field"] for d in details] == ["vendor"]


async def test_non_ascii_digits_are_not_numbers(client: httpx.AsyncClient, conn: Conn) -> None:
    """Found by schemathesis: '²'.isdigit() is true but int('²') raises."""
    r = await client.get("/v1/tasks", params={"limit": "²"}, headers=await user(conn))
    assert_error(r, 422, "validation_error")


async def test_a_committed_task_is_never_answered_with_a_503(
    client: httpx.AsyncClient,
    conn: Conn,
    runtime: Runtime,
    quiet_registration: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the task was read back on a second connection after the commit, so a
    database lost in between answered 503 for a task that existed and was charged (a client
    without an Idempotency-Key would then pay twice)."""
    auth = await user(conn)
    from db import queries

    real_create = queries.create_task
    committed = False

    async def create_task(*args: Any, **kwargs: Any) -> Any:
        nonlocal committed
        committed = True
        return await real_create(*args, **kwargs)

    class LostAfterCommit:
        """The pool, until the charge-and-insert ran: then the database is unreachable."""

        def __init__(self, pool: Any) -> None:
            self._pool = pool

        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            if committed:
                raise ConnectionRefusedError("the database went away")
            return self._pool.acquire(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._pool, name)

    monkeypatch.setattr(queries, "create_task", create_task)
    monkeypatch.setattr(runtime, "pool", LostAfterCommit(runtime.pool))
    r = await client.post("/v1/tasks", json=BODY, headers=auth)
    assert r.status_code == 202, r.text


async def test_every_503_says_when_to_retry(
    client: httpx.AsyncClient, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: only database errors carried Retry-After; an Unavailable raised by the code
    (migrations not current, no vendor configured) did not."""
    import taskhook.app

    async def not_current(_conn: Any) -> bool:
        return False

    monkeypatch.setattr(taskhook.app, "is_current", not_current)
    answer = await client.get("/readyz")
    assert_error(answer, 503, "unavailable")
    assert answer.headers["retry-after"] == "2"
