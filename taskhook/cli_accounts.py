"""`taskhook users | keys | credits`: the accounts an operator manages day to day (issue 17.2).

Added to the groups of taskhook.cli by it (`_add_account_commands`), so that `python -m
taskhook.cli` has them too. What operators read comes as a
table, with `--json` for machines; what a script consumes (a new key) is one JSON line.
"""

from __future__ import annotations

from typing import Any

import click

from taskhook.cli_output import echo_json, echo_table, json_option


def _fail(exc: Exception) -> click.ClickException:
    from common.errors import TaskhookError

    message = exc.message if isinstance(exc, TaskhookError) else str(exc)
    return click.ClickException(message)


@click.command("list", help="Every user by email: credits, open tasks, unrevoked keys.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@json_option
def users_list(limit: int, as_json: bool) -> None:
    from common.ids import format_user_id
    from common.times import iso_time
    from db import accounts_queries
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())
    found = run(
        with_conn(settings, lambda c: accounts_queries.list_users(c, after_email=None, limit=limit))
    )
    rows = [
        {
            "id": format_user_id(u.id),
            "email": u.email,
            "credits": u.balance,
            "active_tasks": u.active_tasks,
            "keys": u.keys,
            "created_at": iso_time(u.created_at),
        }
        for u in found
    ]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["email", "id", "credits", "open tasks", "keys", "created"],
        [
            [r["email"], r["id"], r["credits"], r["active_tasks"], r["keys"], r["created_at"]]
            for r in rows
        ],
    )


@click.group(help="API keys: a user may hold several; a key is shown whole only once.")
def keys() -> None:
    pass


@keys.command("create", help='Another API key for EMAIL; prints {"id", "api_key", "prefix"}.')
@click.argument("email")
def keys_create(email: str) -> None:
    from common.errors import TaskhookError
    from lifecycle.user_accounts import create_key, user_by_email
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())

    async def make(conn: Any) -> Any:
        user = await user_by_email(conn, email)
        return await create_key(conn, user_id=user.id)

    try:
        made, key = run(with_conn(settings, make))
    except TaskhookError as exc:
        raise _fail(exc) from None
    echo_json({"id": made.public_id, "api_key": key, "prefix": made.prefix})


@keys.command("list", help="EMAIL's keys, newest first: prefix, created, revoked.")
@click.argument("email")
@json_option
def keys_list(email: str, as_json: bool) -> None:
    from common.errors import TaskhookError
    from common.times import iso_time
    from db import accounts_queries
    from lifecycle.user_accounts import user_by_email
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())

    async def fetch(conn: Any) -> Any:
        user = await user_by_email(conn, email)
        return await accounts_queries.list_api_keys(conn, user_id=user.id)

    try:
        found = run(with_conn(settings, fetch))
    except TaskhookError as exc:
        raise _fail(exc) from None
    rows = [
        {
            "id": k.public_id,
            "prefix": k.prefix,
            "created_at": iso_time(k.created_at),
            "revoked_at": iso_time(k.revoked_at),
        }
        for k in found
    ]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "prefix", "created", "revoked"],
        [[r["id"], r["prefix"], r["created_at"], r["revoked_at"]] for r in rows],
    )


@keys.command("revoke", help="Revoke KEY_ID (key_...): refused at once by every process.")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    from common.errors import TaskhookError
    from common.times import iso_time
    from db.accounts_queries import parse_key_id
    from lifecycle.user_accounts import revoke_key

    parsed = parse_key_id(key_id)
    if parsed is None:
        raise click.ClickException(f"{key_id!r} is not a key id (key_...)")
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())
    try:
        revoked = run(with_conn(settings, lambda c: revoke_key(c, key_id=parsed, user_id=None)))
    except TaskhookError:
        raise click.ClickException(f"no key {key_id}") from None
    echo_json(
        {
            "id": revoked.public_id,
            "prefix": revoked.prefix,
            "revoked_at": iso_time(revoked.revoked_at),
        }
    )


@click.command(
    "adjust",
    help="Add (or, negative, take away) AMOUNT credits of EMAIL, with a reason kept in the "
    "ledger. Never below zero: such an adjustment is refused (exit 1), nothing written.",
    context_settings={"ignore_unknown_options": True},  # AMOUNT may be negative: -5
)
@click.argument("email")
@click.argument("amount", type=int)
@click.option("--reason", required=True, help="why: kept in the ledger and shown to the user")
def credits_adjust(email: str, amount: int, reason: str) -> None:
    from common.errors import TaskhookError
    from lifecycle.user_accounts import adjust_credits
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())
    try:
        done = run(
            with_conn(
                settings, lambda c: adjust_credits(c, email=email, amount=amount, reason=reason)
            )
        )
    except TaskhookError as exc:
        raise _fail(exc) from None
    if not done.applied:
        raise click.ClickException(
            f"{email} has {done.balance} credits: adjusting by {amount} would take the balance "
            "below zero; nothing was changed"
        )
    echo_json({"email": email, "credits": done.balance, "adjusted": amount})


@click.group(help="The model catalogue: what this deployment serves (GET /v1/models).")
def models() -> None:
    pass


@models.command("list", help="Each model: price, vendors and whether each takes tasks now.")
@json_option
def models_list(as_json: bool) -> None:
    from lifecycle.catalogue import catalogue
    from taskhook.cli import load_settings, run, with_conn, with_database

    settings = with_database(load_settings())
    found = run(with_conn(settings, lambda c: catalogue(c, settings)))
    if as_json:
        echo_json({"data": [m.as_dict() for m in found]})
        return
    echo_table(
        ["model", "price", "vendors", "description"],
        [
            [
                m.id,
                m.price,
                ", ".join(
                    f"{v.vendor}{'' if v.available else ' (unavailable)'}" for v in m.vendors
                ),
                m.description,
            ]
            for m in found
        ],
    )
