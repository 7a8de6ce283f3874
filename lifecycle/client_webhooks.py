"""A client's own webhook on its tasks (issue 18): what a submit may ask for, attaching it to a
new task, the user's signing secret, and what was sent.

The events themselves are written by the move that causes them (0017's trigger) and sent by
lifecycle/webhook_sender.py.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from common.net import is_public
from db import webhooks_out
from db.queries import Conn
from lifecycle.webhook_signing import encode_secret, new_key

EVENTS = ("start", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
FIELDS = frozenset({"webhook", "webhook_events_filter"})
MAX_URL = 2048
# After a rotation the previous key keeps signing this long, so clients can roll over.
ROTATION_GRACE = 24 * 3600.0
# Names that only ever mean this machine or its private network.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


@dataclass(frozen=True)
class ClientWebhook:
    url: str
    events: tuple[str, ...]


def read_webhook(
    body: Mapping[str, Any], *, allow_private: bool
) -> tuple[ClientWebhook | None, list[dict[str, str]]]:
    """The webhook a submit asks for (None: none), and every problem with it. Judged before
    anything is charged; the address a name resolves to is judged again at each delivery."""
    problems: list[dict[str, str]] = []
    if "webhook" not in body:
        if "webhook_events_filter" in body:
            problems.append({"field": "webhook_events_filter", "message": "needs a webhook"})
        return None, problems
    url = body["webhook"]
    problem = _url_problem(url, allow_private=allow_private)
    if problem:
        problems.append({"field": "webhook", "message": problem})
    events = body.get("webhook_events_filter", list(DEFAULT_EVENTS))
    if (
        not isinstance(events, list)
        or not events
        or any(not isinstance(e, str) or e not in EVENTS for e in events)
    ):
        problems.append(
            {
                "field": "webhook_events_filter",
                "message": f"a non-empty list of: {', '.join(EVENTS)}",
            }
        )
    if problems:
        return None, problems
    assert isinstance(url, str)
    return ClientWebhook(url, tuple(e for e in EVENTS if e in events)), []


def _url_problem(url: Any, *, allow_private: bool) -> str | None:
    wanted = "an http(s) URL" if allow_private else "an https URL"
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        return f"must be {wanted} of at most {MAX_URL} characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
        return f"must be {wanted}"
    schemes = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in schemes or not parsed.host:
        return f"must be {wanted}"
    if parsed.userinfo:
        return "must not carry a user name or password"
    if allow_private:
        return None
    host = parsed.host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(_LOCAL_SUFFIXES) or "." not in host:
            return "must reach a public address, not this machine or a private network"
        return None
    if not is_public(address):
        return "must reach a public address, not this machine or a private network"
    return None


async def attach(
    conn: Conn, *, task_id: uuid.UUID, user_id: uuid.UUID, webhook: ClientWebhook
) -> None:
    """Give a new task its webhook, in the transaction that inserts it, and make sure its
    user has a signing secret before the first event is sent."""
    await webhooks_out.set_task_webhook(
        conn, task_id=task_id, url=webhook.url, events=webhook.events
    )
    await webhooks_out.ensure_secret(conn, user_id=user_id, new_key=new_key())


async def current_secret(conn: Conn, *, user_id: uuid.UUID) -> str:
    """The user's current `whsec_` secret, made on first use."""
    return encode_secret(await webhooks_out.ensure_secret(conn, user_id=user_id, new_key=new_key()))


async def rotate_secret(conn: Conn, *, user_id: uuid.UUID) -> str:
    """A new current secret; the previous one keeps signing for ROTATION_GRACE."""
    key = await webhooks_out.rotate_secret(
        conn, user_id=user_id, new_key=new_key(), grace_seconds=ROTATION_GRACE
    )
    return encode_secret(key)


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


async def task_attempts(
    conn: Conn, *, task_id: uuid.UUID, user_id: uuid.UUID | None
) -> list[dict[str, Any]]:
    """A task's events, oldest first, each with its attempts (what was sent, when, and the
    answer)."""
    events: dict[int, dict[str, Any]] = {}
    for r in await webhooks_out.task_webhook_attempts(conn, task_id=task_id, user_id=user_id):
        event = events.get(r["event_id"])
        if event is None:
            event = events[r["event_id"]] = {
                "webhook_id": r["webhook_id"],
                "event": r["event"],
                "task_status": r["task_status"],
                "url": r["url"],
                "state": r["state"],
                "created_at": _time(r["created_at"]),
                "delivered_at": _time(r["delivered_at"]),
                "next_attempt_at": _time(r["next_attempt_at"]) if r["state"] == "pending" else None,
                "attempts": [],
            }
        if r["attempt"] is not None:
            event["attempts"].append(
                {
                    "attempt": r["attempt"],
                    "sent_at": _time(r["started_at"]),
                    "duration_ms": r["duration_ms"],
                    "status_code": r["status_code"],
                    "error": r["error"],
                    "response_body": r["response_body"],
                }
            )
    return list(events.values())
