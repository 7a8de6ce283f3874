"""Invariants that must hold whatever happened (DESIGN.md "Invariants every test may assert")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.settings import Settings
from db import queries
from db.queries import Conn

# The longest reconciler interval the docs allow: `taskhook reconcile --once` from cron, every
# minute (`taskhook reconcile` itself passes every 5 s).
CRON_INTERVAL = 60.0


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
            "balance_mismatches": self.balance_mismatches,
            "ledger_mismatches": self.ledger_mismatches,
            "overdue_open_tasks": self.overdue_open_tasks,
            "active_count_mismatches": self.active_count_mismatches,
            "orphan_log_rows": self.orphan_log_rows,
        }


def _plain(row: Any) -> dict[str, Any]:
    return {k: (str(v) if not isinstance(v, int | str | None) else v) for k, v in dict(row).items()}


async def run_audit(
    conn: Conn,
    *,
    grace_seconds: float = CRON_INTERVAL + Settings.registration_timeout,
    storage_deadline: float = Settings.storage_deadline,
) -> AuditReport:
    """Balance = sum(ledger) per user; one charge and at most one refund per task, a refund
    exactly for failed/canceled ones; no open task past its deadline (plus a grace period;
    a storing task past the later of its deadline and its storing deadline);
    no event or accepted delivery naming a task that does not exist (the log tables' foreign
    keys, checked here instead of on every insert: 0009_log_tables.sql)."""
    return AuditReport(
        balance_mismatches=[_plain(r) for r in await queries.audit_balances(conn)],
        ledger_mismatches=[_plain(r) for r in await queries.audit_refunds(conn)],
        overdue_open_tasks=[
            _plain(r)
            for r in await queries.audit_overdue(
                conn, grace_seconds=grace_seconds, storage_deadline=storage_deadline
            )
        ],
        active_count_mismatches=[_plain(r) for r in await queries.audit_active_counts(conn)],
        orphan_log_rows=[_plain(r) for r in await queries.audit_orphans(conn)],
    )
