"""Timestamps as taskhook writes them everywhere (API, CLI, dashboard): ISO 8601 in UTC with
a `Z`, the form of the task object's `created_at`."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_time(value: datetime | None) -> str | None:
    """A timestamp as the API writes it everywhere: ISO 8601 in UTC with a `Z`."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat() + "Z"
