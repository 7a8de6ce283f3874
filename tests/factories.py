"""Small builders for rows the tests need, through the same queries the product uses."""

from __future__ import annotations

import uuid
from typing import Any

from db import queries
from db.queries import Conn
from submit.auth import hash_api_key, new_api_key


async def make_user(
    conn: Conn, *, credits: int = 10, email: str | None = None
) -> tuple[uuid.UUID, str]:
    user_id, key = uuid.uuid4(), new_api_key()
    await queries.create_user(
        conn,
        user_id=user_id,
        email=email or f"{user_id.hex[:8]}@example.test",
        key_id=uuid.uuid4(),
        key_hash=hash_api_key(key),
        prefix=key[:8],
    )
    if credits:
        await queries.grant_credits(conn, user_id=user_id, amount=credits, note="test")
    return user_id, key


async def make_task(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    cost: int = 1,
    vendor: str = "replicate",
    model: str = "black-forest-labs/flux-schnell",
    input: dict[str, Any] | None = None,
    deadline_seconds: float = 1800,
) -> uuid.UUID:
    async with conn.transaction():
        charged, task_id = await queries.create_task(
            conn,
            task_id=uuid.uuid4(),
            user_id=user_id,
            vendor=vendor,
            model=model,
            input=input or {"prompt": "a red fox"},
            cost=cost,
            idempotency_key=None,
            request_hash=None,
            trace_id="trace-test",
            deadline_seconds=deadline_seconds,
            registration_lease_seconds=30,
        )
    assert charged and task_id is not None
    return task_id
