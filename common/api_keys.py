"""API keys: random, shown once, stored only as a SHA-256 hash.

Made by `taskhook user create` (lifecycle/users.py) and checked on every request
(submit/auth.py), so the one reading of them lives below both.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "thk_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # A fast hash is right here: keys are 256 random bits, not guessable passwords.
    return hashlib.sha256(key.encode()).digest()
