"""Users, API keys and credits as operators and users manage them day to day (issue 17.2).

Shared by the CLI (`taskhook users | keys | credits`) and the client API (`/v1/keys`,
`/v1/me/usage`), so both refuse and record the same way. A key is shown once, when it is made;
after that only its prefix. Revocation is a database write that every process reads on every
request (queries.authenticate), so a revoked key is refused at once everywhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from common.api_keys import hash_api_key, new_api_key
from common.errors import KeyLimit, NotFound, ValidationFailed
from db import accounts_queries as accounts
from db import queries
from db.accounts_queries import ApiKey
from db.models import User
from db.queries import Conn

# Unrevoked keys one user may hold: enough for every app and machine, few enough that a
# leaked key cannot mint keys without bound.
MAX_KEYS = 25
KEY_PREFIX_SHOWN = 8  # "thk_" and four characters: enough to tell one's keys apart
MAX_REASON = 500


def check_email(email: str) -> None:
    """Refuse what is not an email address (users are looked up and shown by it)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        # Syntax only: no DNS lookup; `.test` and other reserved domains are fine for tests.
        validate_email(email, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValidationFailed(
            f"{email!r} is not an email address: {exc}",
            details=[{"field": "email", "message": str(exc)}],
        ) from None


async def user_by_email(conn: Conn, email: str) -> User:
    user = await queries.get_user_by_email(conn, email=email)
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    return user


async def create_key(conn: Conn, *, user_id: uuid.UUID) -> tuple[ApiKey, str]:
    """A new key for the user: (its record, the key itself, to be shown this once)."""
    key = new_api_key()
    made = await accounts.create_api_key(
        conn,
        key_id=uuid.uuid4(),
        user_id=user_id,
        key_hash=hash_api_key(key),
        prefix=key[:KEY_PREFIX_SHOWN],
        max_keys=MAX_KEYS,
    )
    if made is None:
        raise KeyLimit(f"You already have {MAX_KEYS} API keys; revoke one you no longer use first.")
    return made, key


async def revoke_key(conn: Conn, *, key_id: uuid.UUID, user_id: uuid.UUID | None) -> ApiKey:
    """Revoke one key (of this user, when given); refused at once on every process."""
    revoked = await accounts.revoke_api_key(conn, key_id=key_id, user_id=user_id)
    if revoked is None:
        raise NotFound("No API key with this id belongs to you.")
    return revoked


@dataclass(frozen=True, kw_only=True)
class Adjusted:
    """An adjustment's outcome: the new balance, or (refused) the balance left unchanged."""

    applied: bool
    balance: int


async def adjust_credits(conn: Conn, *, email: str, amount: int, reason: str) -> Adjusted:
    """Add (or, negative, take away) credits with a reason kept in the ledger; never below
    zero: such an adjustment is refused and nothing is written."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise ValidationFailed(
            f"a reason of 1-{MAX_REASON} characters is required",
            details=[{"field": "reason", "message": f"1-{MAX_REASON} characters"}],
        )
    if amount == 0:
        raise ValidationFailed(
            "an adjustment of 0 credits changes nothing",
            details=[{"field": "amount", "message": "not 0"}],
        )
    user = await user_by_email(conn, email)
    balance = await accounts.adjust_credits(conn, user_id=user.id, amount=amount, reason=reason)
    if balance is None:
        current = await queries.get_user(conn, user_id=user.id)
        return Adjusted(applied=False, balance=current.balance if current else user.balance)
    return Adjusted(applied=True, balance=balance)
