"""Errors people understand (issue 17.4): a short balance says the price, the balance and how to
get credits; a bad query value says which parameter, never that a body is not JSON."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from db.queries import Conn
from lifecycle.runtime import Runtime
from tests.factories import make_task, make_user

BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a red fox"}}


@pytest.fixture
def quiet_registration(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """About the API only: the vendor call after the 202 is not made."""
    monkeypatch.setattr(runtime, "spawn", lambda coro: coro.close())


async def test_short_balance_says_price_balance_and_what_to_do(
    client: httpx.AsyncClient, conn: Conn, quiet_registration: None
) -> None:
    _, key = await make_user(conn, credits=0)
    r = await client.post("/v1/tasks", json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 402, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert error["price"] == 1 and error["balance"] == 0
    message = error["message"]
    assert "costs 1 credit" in message and "balance is 0 credits" in message
    assert "add credits" in message


@pytest.mark.parametrize(
    ("path", "headers", "field"),
    [
        ("/healthz?challenge=" + "c" * 129, {}, "challenge"),
        ("/healthz?challenge=", {}, "challenge"),
        ("/v1/tasks?limit=abc", None, "limit"),
        ("/v1/tasks?status=done", None, "status"),
        ("/v1/tasks?cursor=forged", None, "cursor"),
        ("/v1/tasks/{task}/events", {"Last-Event-ID": "x"}, "Last-Event-ID"),
    ],
)
async def test_query_errors_name_the_parameter_not_json(
    client: httpx.AsyncClient,
    conn: Conn,
    path: str,
    headers: dict[str, str] | None,
    field: str,
) -> None:
    user_id, key = await make_user(conn, credits=5)
    task_id = await make_task(conn, user_id)
    sent = {"Authorization": f"Bearer {key}"} if headers is None else headers
    if "{task}" in path:
        sent = {**sent, "Authorization": f"Bearer {key}"}
        path = path.format(task="tsk_" + task_id.hex)
    r = await client.get(path, headers=sent)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == [field]
    assert "json" not in r.text.lower()
