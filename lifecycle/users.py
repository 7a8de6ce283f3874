"""Operator actions on users and credits, shared by the CLI and the demo."""

from __future__ import annotations

import uuid

from common.api_keys import hash_api_key, new_api_key
from common.errors import NotFound
from db import queries
from db.queries import Conn


async def create_user(conn: Conn, *, email: str, credits: int) -> tuple[uuid.UUID, str]:
    """A user, their API key (returned once, stored hashed) and an opening grant; refused
    (ValidationFailed) when `email` is not an email address."""
    from lifecycle.user_accounts import check_email

    check_email(email)
    user_id, key = uuid.uuid4(), new_api_key()
    async with conn.transaction():
        await queries.create_user(
            conn,
            user_id=user_id,
            email=email,
            key_id=uuid.uuid4(),
            key_hash=hash_api_key(key),
            prefix=key[:8],
        )
        if credits:
            await queries.grant_credits(conn, user_id=user_id, amount=credits, note="signup")
    return user_id, key


async def grant(conn: Conn, *, email: str, amount: int) -> int:
    user = await queries.get_user_by_email(conn, email=email)
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    async with conn.transaction():
        return await queries.grant_credits(conn, user_id=user.id, amount=amount, note="operator")
