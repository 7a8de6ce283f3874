"""Counters the simulator exposes at ``GET /_sim/stats``.

Tests assert on them (e.g. "every duplicate was sent") and ``taskhook demo`` prints them so a
reader can see how much chaos taskhook absorbed. Everything runs on one event loop, so plain
integers are enough.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Running totals since the app was created."""

    predictions_created: int = 0
    final_statuses: Counter[str] = field(default_factory=Counter)
    api_requests: int = 0
    api_errors_503: int = 0
    api_errors_429: int = 0
    messages: int = 0
    """Webhook messages produced (after the events filter), before any fault."""
    sent: int = 0
    """Genuine webhook POSTs attempted: first tries, retries and duplicate copies."""
    delivered: int = 0
    """Genuine POSTs the receiver answered with 2xx."""
    dropped: int = 0
    duplicated: int = 0
    bad_signature: int = 0
    retried: int = 0
    failed_deliveries: int = 0
    """Copies given up on: retries exhausted, or a non-retryable answer (4xx other than 429)."""
    lost_answers: int = 0
    """Creates that made a job whose answer was replaced by a 504."""
    results_expired: int = 0
    """Result reads answered 404 because the vendor's retention had passed."""
    fetches: Counter[str] = field(default_factory=Counter)
    """Answered ``GET /v1/predictions/{id}`` per prediction id: how often each job was polled."""

    def to_json(self) -> dict[str, Any]:
        """The ``/_sim/stats`` body."""
        finished = sum(self.final_statuses.values())
        return {
            "predictions": {
                "created": self.predictions_created,
                "in_flight": self.predictions_created - finished,
                "succeeded": self.final_statuses["succeeded"],
                "failed": self.final_statuses["failed"],
                "canceled": self.final_statuses["canceled"],
            },
            "webhooks": {
                "messages": self.messages,
                "sent": self.sent,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "duplicated": self.duplicated,
                "bad_signature": self.bad_signature,
                "retried": self.retried,
                "failed_deliveries": self.failed_deliveries,
            },
            "api": {
                "requests": self.api_requests,
                "errors_503": self.api_errors_503,
                "errors_429": self.api_errors_429,
            },
            "results_expired": self.results_expired,
            "lost_answers": self.lost_answers,
            "fetches": {
                "total": self.fetches.total(),
                "predictions_fetched": len(self.fetches),
                "max_per_prediction": max(self.fetches.values(), default=0),
                "fetched_more_than_once": sum(1 for n in self.fetches.values() if n > 1),
            },
        }
