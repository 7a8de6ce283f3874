"""Public ids: `tsk_` and `usr_` and 32 hex digits, one spelling each.

Shared words: the vendors' wire formats (midjourney-proxy's `state`), the database's rows and
the HTTP layer all print or read them, so they live below all of those.
"""

from __future__ import annotations

import re
import uuid

TASK_PREFIX = "tsk_"
USER_PREFIX = "usr_"


def format_task_id(task_id: uuid.UUID) -> str:
    return f"{TASK_PREFIX}{task_id.hex}"


# The one spelling of a task id. uuid.UUID() alone also takes dashes, braces, `urn:uuid:`,
# upper case and any Unicode digits: several names for one task, which caches, logs and
# clients comparing ids would each take for different tasks.
_TASK_ID = re.compile(rf"{TASK_PREFIX}([0-9a-f]{{32}})")


def parse_task_id(text: str) -> uuid.UUID | None:
    """The uuid behind a public task id, or None when it is not one of ours."""
    found = _TASK_ID.fullmatch(text)
    return uuid.UUID(hex=found.group(1)) if found else None


def format_user_id(user_id: uuid.UUID) -> str:
    return f"{USER_PREFIX}{user_id.hex}"


_USER_ID = re.compile(rf"{USER_PREFIX}([0-9a-f]{{32}})")


def parse_user_id(text: str) -> uuid.UUID | None:
    """The uuid behind a public user id (`usr_` + 32 lower-case hex digits), else None."""
    found = _USER_ID.fullmatch(text)
    return uuid.UUID(hex=found.group(1)) if found else None
