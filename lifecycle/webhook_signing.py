"""Signing our webhooks to clients the Standard Webhooks way (https://www.standardwebhooks.com).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 under the key a
`whsec_` secret encodes; `webhook-signature` lists one `v1,<base64>` per key, space-separated,
so during a rotation a client holding either key verifies (the official libraries accept any
listed signature).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"
KEY_BYTES = 32


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_secret(key: bytes) -> str:
    """The key as clients configure it: `whsec_` and its base64."""
    return PREFIX + base64.b64encode(key).decode()


def sign(keys: Sequence[bytes], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one signature per key, in the order given."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )
