"""docs/API.md restates a few limits and enums of the client API for people; each is held to the
constant the code checks with, so the prose cannot drift from the contract (issue 19.3)."""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import TASK_ERROR_DEFAULT, TASK_ERRORS
from common.states import TaskStatus
from lifecycle.client_webhooks import EVENTS
from submit.accept import MAX_IDEMPOTENCY_KEY
from submit.actions import INDEXED, MAX_INDEX
from submit.contracts import MAX_LIMIT
from submit.render import TASK_FIELDS
from submit.streaming import MAX_EVENT_ID_DIGITS
from vendors.midjourney_proxy import ACTIONS

API = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    return API.split(f"### {title}", 1)[1].split("\n#", 1)[0]


def test_limits_in_the_prose_are_the_checked_ones() -> None:
    assert f"`Idempotency-Key` (≤ {MAX_IDEMPOTENCY_KEY} chars)" in API
    assert f"`limit` 1-{MAX_LIMIT} (" in API
    assert f"1-{MAX_EVENT_ID_DIGITS} digits" in API
    assert f'"index": 1-{MAX_INDEX}' in API


def test_the_task_object_example_shows_every_field_the_renderer_writes() -> None:
    example = section("Task object").split("```json", 1)[1].split("```", 1)[0]
    assert re.findall(r'"(\w+)":', example) == list(TASK_FIELDS)


def test_the_documented_states_are_the_states() -> None:
    status = section("Task object").split("- `status`:", 1)[1].split("\n- `", 1)[0]
    assert set(re.findall(r"`(\w+)`", status)) == {s.value for s in TaskStatus}


def test_the_error_table_is_the_client_visible_one() -> None:
    rows = re.findall(r"^  \| `(\w+)`[^|]*\| (.+?) \|$", section("Task object"), flags=re.M)
    assert {code: text for code, text in rows if code != "code"} == dict(TASK_ERRORS)
    assert f'reads "{TASK_ERROR_DEFAULT}"' in section("Task object")


def test_actions_and_webhook_events_are_the_offered_ones() -> None:
    actions = API.split("| `POST /v1/tasks/{id}/actions` |", 1)[1].split("\n", 1)[0]
    indexed = " \\| ".join(f'"{a}"' for a in sorted(INDEXED, key=list(ACTIONS).index))
    assert f'{{"action": {indexed}, "index"' in actions
    others = [a for a in ACTIONS if a not in INDEXED]
    assert all(f'{{"action": "{a}"}}' in actions for a in others)
    for event in EVENTS:
        assert f"`{event}`" in API
