"""Knobs of the Replicate look-alike: how long jobs take and which faults it injects.

Every fault is off by default so a bare ``SimulatorConfig()`` behaves like a healthy vendor;
tests and ``taskhook simulator --chaos`` turn on exactly the misbehaviour they want to prove
taskhook survives. ``seed`` makes the fault decisions reproducible run to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from simulator.signing import generate_secret, secret_key

_PROBABILITIES = (
    "drop",
    "duplicate",
    "fail",
    "error_rate",
    "bad_signature",
    "fal_payload_error",
    "lost_answers",
)


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Behaviour of one simulator instance (see the module docstring of each knob's user).

    Probabilities are in ``[0, 1]``: ``1.0`` means "always", ``0.0`` means "never".
    """

    drop: float = 0.0
    """Probability that a webhook message is never sent at all."""
    duplicate: float = 0.0
    """Probability that a message is sent a second time, with the same ``webhook-id``."""
    delay: float = 0.0
    """Upper bound (seconds) of a uniform random wait before each webhook message."""
    reorder: bool = False
    """Hold a prediction's messages until it finishes and send them shuffled."""
    fail: float = 0.0
    """Fraction of predictions that end ``failed`` with an ``error``."""
    error_rate: float = 0.0
    """Fraction of create/get/cancel calls answered 503 or 429 (half each), with no effect."""
    lost_answers: float = 0.0
    """Fraction of Replicate creates that make the job but whose answer is lost: the gateway
    answers 504 instead of the 201, and the client cannot know that a job exists."""
    early: bool = False
    """Create waits for the ``start`` webhook (all of them when ``job_seconds == 0``) first."""
    bad_signature: float = 0.0
    """Probability that a wrongly signed junk copy precedes a message."""
    seed: int | None = None
    """Seed of the fault decisions; ``None`` draws one from the OS."""
    job_seconds: float = 1.0
    """Time from create to the final state."""
    steps: int = 4
    """Progress log lines (and ``logs`` webhooks) while processing."""
    webhook_secret: str = field(default_factory=generate_secret)
    """Standard Webhooks signing secret, ``whsec_<base64 key>``."""
    api_token: str | None = None
    """When set, every ``/v1`` call must carry ``Authorization: Bearer <token>``."""
    fal_key: str | None = None
    """When set, every ``/fal`` queue call must carry ``Authorization: Key <key>``."""
    mj_secret: str | None = None
    """When set, every ``/mj`` call must carry this ``mj-api-secret`` header (else 403)."""
    fal_payload_error: float = 0.0
    """Fraction of fal's successful jobs whose webhook comes without its payload (fal's
    ``payload_error``): the result must be read from the queue."""
    mj_dialect: str = "novicezk"
    """Which midjourney-proxy fork ``/mj`` is: ``novicezk`` (``/mj/submit/change``) or
    ``trueai`` (buttons, ``/mj/submit/action``, MODAL tasks and code 21, 204 fetches)."""
    mj_lag: float = 0.0
    """Seconds a finished ``/mj`` job still looks IN_PROGRESS to fetch and change after its final
    notify went out: a relay's lagging copy, the ``task_status_not_success`` race."""
    public_url: str = ""
    """Base URL written into ``urls`` and output links; empty = the request's own base URL."""
    time_scale: float = 1.0
    """Factor on the vendors' own clocks: the wait a 429 announces (Replicate's ~30 s), webhook
    retry schedules (Replicate's minute, fal's 2 hours) and result retention (Replicate's hour,
    fal's 6 minutes for a result of 10 KB or more). 1.0 is the real vendor; tests shrink it."""
    max_outputs: int = 4
    """Largest accepted ``input.num_outputs``."""

    def scaled(self, seconds: float) -> float:
        """A vendor's real duration on this simulator's clock."""
        return seconds * self.time_scale

    def __post_init__(self) -> None:
        """Reject nonsense early: a typo on the command line should not make a silent no-op."""
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"delay must be >= 0, got {self.delay!r}")
        if self.mj_dialect not in ("novicezk", "trueai"):
            raise ValueError(f"mj_dialect must be novicezk or trueai, got {self.mj_dialect!r}")
        if not (math.isfinite(self.mj_lag) and self.mj_lag >= 0):
            raise ValueError(f"mj_lag must be >= 0, got {self.mj_lag!r}")
        if not (math.isfinite(self.job_seconds) and self.job_seconds >= 0):
            raise ValueError(f"job_seconds must be >= 0, got {self.job_seconds!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps!r}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")
        if self.max_outputs < 1:
            raise ValueError(f"max_outputs must be >= 1, got {self.max_outputs!r}")
        if not self.webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret must look like whsec_<base64>")
        secret_key(self.webhook_secret)  # raises ValueError on a malformed key
