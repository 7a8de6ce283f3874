"""Small builders for rows the tests need, through the same queries the product uses."""

from __future__ import annotations

import uuid
from typing import Any

from db import queries
from db.queries import Conn
from lifecycle.users import create_user


async def make_user(
    conn: Conn, *, credits: int = 10, email: str | None = None
) -> tuple[uuid.UUID, str]:
    """A user with an API key, made the way `taskhook users create` makes one."""
    return await create_user(
        conn, email=email or f"{uuid.uuid4().hex[:8]}@example.test", credits=credits
    )


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
