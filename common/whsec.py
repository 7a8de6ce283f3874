"""Standard Webhooks secrets (`whsec_<base64 key>`): one reading of them for settings and
the receiver alike."""

from __future__ import annotations

import base64
import binascii

PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (the prefix is optional, as in the spec). Its base64 may
    come without padding: the official `standardwebhooks` library pads it before decoding, so a
    secret it accepts must work here too. ValueError when it is not base64 or empty."""
    raw = secret.removeprefix(PREFIX).rstrip("=")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not base64 after 'whsec_'") from exc
    if not key:
        raise ValueError("webhook secret is empty after 'whsec_'")
    return key
