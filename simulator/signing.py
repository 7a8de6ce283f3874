"""Standard Webhooks signing, byte for byte what Replicate sends.

Replicate signs webhooks with the Standard Webhooks scheme (https://www.standardwebhooks.com):
``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}." + body)), where the key is the base64
part of the ``whsec_`` secret. Reproducing it exactly is the point of the simulator: our
Replicate adapter's verifier must accept these and reject anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
import time

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format marker, not a secret
_ID_ALPHABET = string.ascii_letters + string.digits


def generate_secret() -> str:
    """A fresh secret in the format Replicate hands out (24 random bytes, like Svix)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret (the prefix is optional, as in the spec)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64 after 'whsec_'") from exc


def new_webhook_id() -> str:
    """A message id (``msg_`` + 27 random chars).

    Drawn from the OS, never from the seeded fault RNG: two simulator runs with the same seed
    must not reuse ids, or a receiver that remembers delivery ids would drop real messages.
    """
    return "msg_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def forged_signature(webhook_id: str, timestamp: int, body: bytes) -> str:
    """A well-formed signature made with a random key: what an attacker or a stale secret sends."""
    wrong = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")
    return sign(wrong, webhook_id, timestamp, body)


def webhook_headers(
    secret: str,
    webhook_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    forged: bool = False,
) -> dict[str, str]:
    """Headers for one send; the timestamp is taken now so retries carry fresh ones."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = (
        forged_signature(webhook_id, ts, body) if forged else sign(secret, webhook_id, ts, body)
    )
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
    }
