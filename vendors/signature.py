"""Standard Webhooks verification (https://www.standardwebhooks.com), as Replicate signs.

Pure: the raw body, the headers, the secrets and the clock come in; a `Delivery` or an error
comes out. Tests need no sleeping or patching.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import SignatureInvalid, TimestampOutOfRange
from common.whsec import decode_secret

__all__ = ["Delivery", "decode_secret", "sign", "verify_standard_webhook"]


@dataclass(frozen=True)
class Delivery:
    """A verified webhook: its id (the same on the vendor's retries) and when it was signed;
    for vendors that sign many customers' webhooks with one key (fal), the signed account it
    comes from and the job it names (lifecycle/accounts.py)."""

    delivery_id: str
    timestamp: int
    account: str | None = None
    job: str | None = None


def sign(*, secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, content, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_standard_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: float,
) -> Delivery:
    """Check the signature over the raw bytes, then the timestamp window (both directions).

    Any signature in the space-separated `webhook-signature` list, under any current secret,
    is enough: that is how vendors rotate secrets without downtime.
    """
    delivery_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not delivery_id or not timestamp or not signatures or not secrets:
        raise SignatureInvalid("webhook-id, webhook-timestamp and webhook-signature are required")
    valid = False
    for secret in secrets:
        expected = sign(secret=secret, delivery_id=delivery_id, timestamp=timestamp, body=body)
        for candidate in signatures.split(" "):
            version, _, value = candidate.partition(",")
            # compare every candidate: no early exit that would time which one matched
            if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
                valid = True
    if not valid:
        raise SignatureInvalid()
    seconds = check_timestamp(timestamp, now=now, tolerance=tolerance, header="webhook-timestamp")
    return Delivery(delivery_id=delivery_id, timestamp=seconds)


# Seconds since 1970 have 10 digits until the year 2286; a few more cost nothing. Bounded
# before int(), which refuses 4300 digits, and before the float arithmetic, which overflows
# at 309.
MAX_TIMESTAMP_DIGITS = 12


def check_timestamp(timestamp: str, *, now: float, tolerance: float, header: str) -> int:
    """The signed timestamp in seconds, if it is within `tolerance` of `now`."""
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > MAX_TIMESTAMP_DIGITS:
        raise TimestampOutOfRange(f"{header} must be an integer number of seconds")
    seconds = int(timestamp)
    if abs(now - seconds) > tolerance:
        raise TimestampOutOfRange(f"{header} is more than {int(tolerance)} s away from our clock")
    return seconds
