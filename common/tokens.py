"""Signed callback tokens: the task a webhook is about, readable before the vendor's id is known.

A token goes into the callback URL at registration. Because it names our task id, a callback
that overtakes the vendor's create response still finds its task.
"""

from __future__ import annotations

import uuid

from itsdangerous import BadSignature, URLSafeSerializer

_SALT = "taskhook.callback.v1"


class CallbackTokens:
    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt=_SALT)
        # One signer for every read: `loads` builds a new one per call, and every webhook
        # reads a token (a measurable share of the receiver's time under load).
        self._signer = self._serializer.make_signer(_SALT)

    def issue(self, *, task_id: uuid.UUID, vendor: str) -> str:
        token: str = self._serializer.dumps([task_id.hex, vendor])
        return token

    def read(self, token: str, *, vendor: str) -> uuid.UUID | None:
        """The task id, or None when the token is forged, damaged or for another vendor."""
        try:
            value = self._serializer.load_payload(self._signer.unsign(token))
        except BadSignature:
            return None
        if not (isinstance(value, list) and len(value) == 2 and value[1] == vendor):
            return None
        try:
            return uuid.UUID(hex=str(value[0]))
        except ValueError:
            return None
