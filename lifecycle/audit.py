"""Invariants that must hold whatever happened (DESIGN.md "Invariants every test may assert")."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common.ids import format_task_id, format_user_id
from common.settings import Settings
from common.times import iso_time
from db import queries
from db.queries import Conn

# The longest reconciler interval the docs allow: `taskhook reconcile --once` from cron, every
# minute (`taskhook reconcile` itself passes every 5 s).
CRON_INTERVAL = 60.0

# How far before its mark an incremental audit starts: rows carry their transaction's start
# time, so a row written by a transaction that began before the last audit but committed after
# it carries a time before the mark. Transactions here last seconds; ten minutes covers them.
SETTLE = timedelta(minutes=10)


def default_grace(settings: Settings) -> float:
    """How far past its deadline a task may still be open: the reconciler claims it on its next
    pass (within one interval) and asks the vendor once more (one vendor call) before failing
    it. The bound DESIGN.md promises, which the audit checks."""
    return CRON_INTERVAL + settings.registration_timeout


@dataclass
class AuditReport:
    balance_mismatches: list[dict[str, Any]] = field(default_factory=list)
    ledger_mismatches: list[dict[str, Any]] = field(default_factory=list)
    overdue_open_tasks: list[dict[str, Any]] = field(default_factory=list)
    active_count_mismatches: list[dict[str, Any]] = field(default_factory=list)
    orphan_log_rows: list[dict[str, Any]] = field(default_factory=list)
    # None: the whole history was checked; else rows written since then.
    since: datetime | None = None

    @property
    def ok(self) -> bool:
        return not (
            self.balance_mismatches
            or self.ledger_mismatches
            or self.overdue_open_tasks
            or self.active_count_mismatches
            or self.orphan_log_rows
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
            "balance_mismatches": self.balance_mismatches,
            "ledger_mismatches": self.ledger_mismatches,
            "overdue_open_tasks": self.overdue_open_tasks,
            "active_count_mismatches": self.active_count_mismatches,
            "orphan_log_rows": self.orphan_log_rows,
        }


def _plain(row: Any, *, ids: str = "task") -> dict[str, Any]:
    """A typed row (db.models) as the CLI prints it: ids in their public spelling (`tsk_...`
    that `taskhook tasks show` takes, `usr_...`; `ids` says what the row's `id` is), times in
    the API's ISO 8601 `Z` form."""
    plain: dict[str, Any] = {}
    for key, value in asdict(row).items():
        if isinstance(value, uuid.UUID):
            user = key == "user_id" or (key == "id" and ids == "user")
            value = format_user_id(value) if user else format_task_id(value)
        elif isinstance(value, datetime):
            value = iso_time(value)
        elif not isinstance(value, int | str | None):
            value = str(value)
        plain[key] = value
    return plain


async def run_audit(
    conn: Conn,
    *,
    grace_seconds: float = CRON_INTERVAL + Settings.registration_timeout,
    storage_deadline: float = Settings.storage_deadline,
    incremental: bool = False,
) -> AuditReport:
    """Balance = sum(ledger) per user; one charge and at most one refund per task, a refund
    exactly for failed/canceled ones, except a failed task a follow-up action builds on (it
    keeps its charge: 0021_followups_keep_charge.sql), and `tasks.refunded` saying so; no
    open task past its deadline (plus a grace period; a storing task past the later of its
    deadline and its storing deadline);
    no event or accepted delivery naming a task that does not exist (the log tables' foreign
    keys, checked here instead of on every insert: 0009_log_tables.sql).

    `incremental`: only what changed since the last incremental run that found nothing wrong
    (its start, less SETTLE): the users with new ledger rows, the tasks created or ended since,
    the events and deliveries written since; open tasks are few and always all checked. Its
    cost follows the traffic since, not the history. The first run, and any run after one that
    found something, checks everything since the last clean one (or all); a clean run moves
    the mark. The full audit also catches what no new row points at (a balance changed by
    hand), so run it now and then."""
    started: datetime = await conn.fetchval("SELECT clock_timestamp()")
    mark = await queries.audit_mark(conn) if incremental else None
    overdue = [
        _plain(r)
        for r in await queries.audit_overdue(
            conn, grace_seconds=grace_seconds, storage_deadline=storage_deadline
        )
    ]
    if mark is None:
        report = AuditReport(
            balance_mismatches=[_plain(r, ids="user") for r in await queries.audit_balances(conn)],
            ledger_mismatches=[_plain(r) for r in await queries.audit_refunds(conn)],
            overdue_open_tasks=overdue,
            active_count_mismatches=[
                _plain(r, ids="user") for r in await queries.audit_active_counts(conn)
            ],
            orphan_log_rows=[_plain(r) for r in await queries.audit_orphans(conn)],
        )
    else:
        since = mark - SETTLE
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # Custom plans: a generic one cannot know that `since` is recent, and reads all.
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            report = AuditReport(
                balance_mismatches=[
                    _plain(r, ids="user")
                    for r in await queries.audit_balances_since(conn, since=since)
                ],
                ledger_mismatches=[
                    _plain(r) for r in await queries.audit_refunds_since(conn, since=since)
                ],
                overdue_open_tasks=overdue,
                active_count_mismatches=[
                    _plain(r, ids="user")
                    for r in await queries.audit_active_counts_since(conn, since=since)
                ],
                orphan_log_rows=[
                    _plain(r) for r in await queries.audit_orphans_since(conn, since=since)
                ],
                since=since,
            )
    if incremental and report.ok:
        await queries.set_audit_mark(conn, at=started)
    return report
