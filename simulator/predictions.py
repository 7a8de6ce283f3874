"""A prediction as Replicate represents it, and the bits of its wire format.

The JSON produced by :meth:`Prediction.to_json` is what both the API responses and the webhook
bodies carry, field for field, so the Replicate adapter parses simulator traffic exactly as it
would parse the real vendor's.
"""

from __future__ import annotations

import base64
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from simulator.png import gradient_png

if TYPE_CHECKING:
    from simulator.dialect import Dialect

Status = Literal["starting", "processing", "succeeded", "failed", "canceled"]
EventKind = Literal["start", "output", "logs", "completed"]

ALL_EVENTS: tuple[EventKind, ...] = ("start", "output", "logs", "completed")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_prediction_id() -> str:
    """26 lowercase alphanumerics, the shape of Replicate ids.

    Drawn from the OS (not the seeded RNG) so restarting a seeded simulator never hands out an
    id that a database still associates with an older task.
    """
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def iso_now() -> tuple[str, float]:
    """Current time as Replicate writes it (microseconds, ``Z``), plus the epoch seconds."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), now.timestamp()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def tqdm_line(done: int, total: int, elapsed: float, *, width: int = 10) -> str:
    """A tqdm progress line, the usual content of a Cog model's logs.

    >>> tqdm_line(2, 4, 0.645)
    '  50%|█████     | 2/4 [00:00<00:00, 3.1it/s]\\n'
    """
    fraction = done / total if total else 1.0
    filled = int(fraction * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = (total - done) / rate if rate > 0 else 0.0
    return (
        f"{round(fraction * 100):4d}%|{'█' * filled}{' ' * (width - filled)}| {done}/{total} "
        f"[{_clock(elapsed)}<{_clock(remaining)}, {rate:.1f}it/s]\n"
    )


@dataclass
class Prediction:
    """Mutable state of one prediction; only the simulator's event loop touches it."""

    model: str
    version: str
    input: dict[str, Any]
    webhook: str | None
    events_filter: tuple[EventKind, ...]
    base_url: str
    num_outputs: int
    will_fail: bool
    id: str = field(default_factory=new_prediction_id)
    dialect: Dialect | None = field(default=None, repr=False)
    status: Status = "starting"
    logs: str = ""
    progress: int = 0
    """Percent of the steps done (Replicate shows it only in ``logs``; other dialects use it)."""
    output: list[str] | None = None
    error: str | None = None
    created_at: str = ""
    started_at: str | None = None
    completed_at: str | None = None
    started_ts: float | None = None
    completed_ts: float | None = None
    retention: float | None = None
    """Seconds after completion that the outputs (and the input) are kept; None: forever.
    Replicate deletes an API prediction's input and output after an hour."""
    inline_outputs: bool = False
    """Outputs are data: URIs, as a `Prefer: wait` create answers them."""
    webhook_completed: str | None = None
    """When the final webhook went out (Replicate shows it; null without a webhook)."""
    held: bool = False
    """Created but waiting to be started (a midjourney-proxy task in MODAL)."""

    def __post_init__(self) -> None:
        if not self.created_at:
            self.created_at, _ = iso_now()

    @property
    def prompt(self) -> str:
        """The prompt the request carried (validated to be a non-empty string)."""
        return str(self.input.get("prompt", ""))

    @property
    def terminal(self) -> bool:
        """True once the status can no longer change."""
        return self.status in TERMINAL

    def start_processing(self) -> None:
        """``starting`` → ``processing``: the model has booted."""
        self.status = "processing"
        self.started_at, self.started_ts = iso_now()

    def finish(self, status: Status, *, error: str | None = None) -> None:
        """Move to a terminal status and stamp ``completed_at``."""
        self.status = status
        self.error = error
        self.completed_at, self.completed_ts = iso_now()

    @property
    def data_removed(self) -> bool:
        """True once the retention period after completion has passed."""
        return (
            self.retention is not None
            and self.completed_ts is not None
            and time.time() - self.completed_ts > self.retention
        )

    def file_url(self, index: int) -> str:
        """Where output ``index`` is served (``GET /files/{id}/{index}.png``)."""
        return f"{self.base_url}/files/{self.id}/{index}.png"

    def output_ref(self, index: int) -> str:
        """Output ``index`` as the job reports it: a URL, or the image itself inline."""
        if not self.inline_outputs:
            return self.file_url(index)
        png = gradient_png(self.id, index, self.prompt)
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    def to_json(self) -> dict[str, Any]:
        """The prediction object of Replicate's API; every field is always present."""
        api = f"{self.base_url}/v1/predictions/{self.id}"
        metrics: dict[str, float] = {}
        if self.started_ts is not None and self.completed_ts is not None:
            metrics["predict_time"] = round(self.completed_ts - self.started_ts, 6)
        removed = self.data_removed
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": {} if removed else self.input,
            "logs": self.logs,
            "output": list(self.output) if self.output is not None and not removed else None,
            "data_removed": removed,
            "error": self.error,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "urls": {
                "get": api,
                "cancel": f"{api}/cancel",
                "stream": f"{api}/stream",
                "web": f"{self.base_url}/p/{self.id}",
            },
            "metrics": metrics,
            "webhook": self.webhook,
            "webhook_events_filter": list(self.events_filter),
            "webhook_completed": self.webhook_completed,
        }

    def to_list_json(self) -> dict[str, Any]:
        """The entry of `GET /v1/predictions`: no logs, no webhook, plus `source`
        (https://replicate.com/docs/reference/http#predictions.list)."""
        full = self.to_json()
        entry = {key: full[key] for key in _LIST_FIELDS}
        entry["source"] = "api"
        entry["urls"] = {"get": full["urls"]["get"], "cancel": full["urls"]["cancel"]}
        return entry


_LIST_FIELDS = (
    "id",
    "model",
    "version",
    "input",
    "output",
    "data_removed",
    "error",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "metrics",
)
