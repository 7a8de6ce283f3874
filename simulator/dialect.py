"""How one simulated vendor writes its jobs on the wire: ids, webhook bodies and signatures.

The job lifecycle (timing, progress steps, failures, cancel) and the fault injection are the
same for every vendor and live in ``lifecycle.py`` / ``webhooks.py``; a dialect only decides
what a job looks like to the outside. Replicate's dialect is here; fal's and
midjourney-proxy's live next to their routes (``fal.py``, ``midjourney.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from simulator.predictions import EventKind, new_prediction_id
from simulator.signing import webhook_headers

if TYPE_CHECKING:
    from simulator.predictions import Prediction


class Dialect(Protocol):
    name: str

    def new_id(self) -> str:
        """A fresh job id in this vendor's format (from the OS, never the seeded RNG)."""

    def webhook_body(self, prediction: Prediction, event: EventKind) -> bytes | None:
        """The callback this event produces, or None when this vendor sends none for it."""

    def webhook_headers(self, message_id: str, body: bytes, *, forged: bool) -> dict[str, str]:
        """Headers of one send (signed now, so retries carry fresh timestamps)."""

    def retry_delays(self, event: EventKind) -> tuple[float, ...]:
        """The vendor's waits (real seconds) before each resend of a refused webhook."""


# "When Replicate sends the final webhook for a prediction (succeeded, failed or canceled) ... If
# we can't make the request at all, or if we get a 4xx or 5xx response, we'll retry the webhook
# ... on an exponential backoff. The final retry is sent about 1 minute after the prediction
# completed. We do not retry any webhooks for intermediate states."
# https://replicate.com/docs/topics/webhooks/receive-webhook
REPLICATE_FINAL_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class ReplicateDialect:
    """Replicate: the prediction object on every filtered event, Standard Webhooks signed."""

    name = "replicate"

    def __init__(self, webhook_secret: str) -> None:
        self._secret = webhook_secret

    def new_id(self) -> str:
        return new_prediction_id()

    def webhook_body(self, prediction: Prediction, event: EventKind) -> bytes | None:
        if event not in prediction.events_filter:
            return None
        return json.dumps(prediction.to_json(), separators=(",", ":"), ensure_ascii=False).encode()

    def webhook_headers(self, message_id: str, body: bytes, *, forged: bool) -> dict[str, str]:
        return webhook_headers(self._secret, message_id, body, forged=forged)

    def retry_delays(self, event: EventKind) -> tuple[float, ...]:
        return REPLICATE_FINAL_RETRIES if event == "completed" else ()
