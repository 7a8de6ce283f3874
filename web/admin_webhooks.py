"""The dashboard's panel of webhooks sent to clients (issue 18): failing destinations, the
latest events that failed or are being retried, and a replay, the same as
`taskhook webhooks replay`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.errors import NotFound
from common.ids import format_task_id
from db import webhooks_out
from db.queries import Conn

DESTINATION_LIMIT = 20
EVENT_LIMIT = 50
MAX_EVENT_ID = 2**63 - 1


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


async def panel(conn: Conn) -> dict[str, Any]:
    depth = await webhooks_out.outbox_depth(conn)
    failing = await webhooks_out.failing_destinations(conn, limit=DESTINATION_LIMIT)
    events = await webhooks_out.list_outbox(conn, failed_only=True, task_id=None, limit=EVENT_LIMIT)
    return {
        "pending": depth.pending,
        "oldest_due_seconds": depth.oldest_due,
        "failing_destinations": [
            {
                "host": d.host,
                "events": d.events,
                "failed": d.failed,
                "gone": d.gone,
                "retrying": d.retrying,
                "last_at": _time(d.last_at),
                "last_answer": d.last_answer,
            }
            for d in failing
        ],
        "failed_events": [
            {
                "id": e.id,
                "task_id": format_task_id(e.task_id),
                "url": e.url,
                "event": e.event,
                "webhook_id": e.webhook_id,
                "state": e.state,
                "attempts": e.attempts,
                "last_status": e.last_status,
                "last_error": e.last_error,
                "updated_at": _time(e.updated_at),
                "next_attempt_at": _time(e.next_attempt_at) if e.state == "pending" else None,
            }
            for e in events
        ],
    }


async def replay(conn: Conn, raw_id: str) -> dict[str, Any]:
    """Send an event again now (its id as the path gave it); NotFound for no such event, or
    one being sent right now."""
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= len(str(MAX_EVENT_ID))):
        raise NotFound("No webhook event with this id.")
    event_id = int(raw_id)
    if event_id > MAX_EVENT_ID or not await webhooks_out.replay_outbox(conn, event_id=event_id):
        raise NotFound("No webhook event with this id, or it is being sent right now.")
    return {"id": event_id, "state": "pending"}
