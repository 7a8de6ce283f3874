"""`taskhook webhooks`: operators' view of the webhooks sent to clients (issue 18)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click


@click.group(help="Webhooks sent to clients: the outbox, failures and replays.")
def webhooks() -> None:
    pass


@webhooks.command(
    "list",
    help="Webhook events, newest first; --failed for those that will not be delivered "
    "(failed, gone) or are being retried; --task for one task's.",
)
@click.option("--failed", is_flag=True, help="only undeliverable and retrying events")
@click.option("--task", "task", default=None, help="one task's events (tsk_...)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def webhooks_list(failed: bool, task: str | None, limit: int) -> None:
    from common.ids import format_task_id, parse_task_id
    from db import webhooks_out
    from taskhook.cli import load_settings, run, with_conn, with_database
    from taskhook.cli_output import echo_json

    task_id = None
    if task is not None:
        task_id = parse_task_id(task)
        if task_id is None:
            raise click.BadParameter(f"not a task id: {task!r}", param_hint="--task")
    settings = with_database(load_settings())
    events = run(
        with_conn(
            settings,
            lambda c: webhooks_out.list_outbox(c, failed_only=failed, task_id=task_id, limit=limit),
        )
    )
    rows: list[dict[str, Any]] = []
    for event in events:
        row = dataclasses.asdict(event)
        row["task_id"] = format_task_id(event.task_id)
        rows.append(row)
    echo_json(rows)


@webhooks.command(
    "replay",
    help="Send one event again now, under its own webhook-id, with a fresh set of retries "
    "(its id from `taskhook webhooks list`).",
)
@click.argument("event_id", type=int)
def webhooks_replay(event_id: int) -> None:
    from db import webhooks_out
    from taskhook.cli import load_settings, run, with_conn, with_database
    from taskhook.cli_output import echo_json

    settings = with_database(load_settings())
    ok = run(with_conn(settings, lambda c: webhooks_out.replay_outbox(c, event_id=event_id)))
    if not ok:
        raise click.ClickException(f"no webhook event {event_id}, or it is being sent right now")
    echo_json({"id": event_id, "state": "pending"})
    sys.exit(0)
