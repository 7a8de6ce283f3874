"""Request models answered in our words (common/validation.py): the 422's details as the
hand-written checks gave them, and the OpenAPI schema from the same declaration."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from common.errors import ValidationFailed
from common.states import TERMINAL, TaskStatus
from common.validation import check, details, schema, validated
from db.models import Task
from submit.contracts import MAX_MODEL_LENGTH, NewTask
from submit.contracts import Task as TaskObject
from submit.render import TASK_FIELDS, _render

MODEL = {"field": "model", "message": f"required: a model name of 1-{MAX_MODEL_LENGTH} characters"}
INPUT = {"field": "input", "message": "required: an object of model inputs"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], [{"field": "", "message": "the body must be a JSON object"}]),
        ("x", [{"field": "", "message": "the body must be a JSON object"}]),
        ({}, [MODEL, INPUT]),
        (
            {"zeta": 1, "model": "", "input": [], "alpha": 2},
            [
                {"field": "alpha", "message": "unknown field"},
                {"field": "zeta", "message": "unknown field"},
                MODEL,
                INPUT,
            ],
        ),
        ({"model": "m" * (MAX_MODEL_LENGTH + 1), "input": {}}, [MODEL]),
        ({"model": " \x1c\t", "input": {}}, [MODEL]),  # blank to str.strip, not to \S
        ({"model": 7, "input": "prompt"}, [MODEL, INPUT]),
        ({"model": "m", "input": {"prompt": "p"}}, []),
        ({"model": "m" * MAX_MODEL_LENGTH, "input": {}}, []),
    ],
)
def test_details_say_every_problem_in_our_words(body: Any, expected: list[dict[str, str]]) -> None:
    _, found = check(NewTask, body)
    assert details(NewTask, found) == expected


def test_validated_raises_the_422_with_its_details() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validated(NewTask, {"input": {}})
    assert caught.value.status_code == 422
    assert validated(NewTask, {"model": "m", "input": {}}).model == "m"


def test_the_schema_states_the_limits_the_check_applies() -> None:
    new_task = schema(NewTask)
    model = new_task["properties"]["model"]
    assert model["maxLength"] == MAX_MODEL_LENGTH and model["minLength"] == 1
    assert new_task["required"] == ["model", "input"]
    assert new_task["additionalProperties"] is False
    assert new_task["properties"]["vendor"]["type"] == "string"
    assert "title" not in str(new_task)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_the_renderer_writes_what_the_task_model_declares(status: TaskStatus) -> None:
    """Rendering stays a dict (submit/render.py); the model that gives OpenAPI its Task schema
    must accept what it writes, in every state."""
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    task = Task(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        vendor="replicate",
        model="m",
        vendor_model="o/m",
        fallbacks=[],
        parent_id=uuid.uuid4(),
        input={"prompt": "p"},
        cost=1,
        status=status,
        progress=40,
        vendor_task_id=None,
        outputs=None,
        result=None,
        error={"code": "vendor_failed", "message": "vendor words"},
        trace_id="t",
        attempts=0,
        storage_attempts=0,
        last_error=None,
        created_at=now,
        updated_at=now,
        deadline_at=now,
        completed_at=now if status in TERMINAL else None,
        next_attempt_at=None,
        next_poll_at=None,
        refunded=False,
    )
    result = {"url": "https://s3/x", "content_type": "image/png", "bytes": 1, "sha256": "a" * 64}
    rendered = _render(task, result if status is TaskStatus.COMPLETED else None)
    assert tuple(rendered) == TASK_FIELDS
    TaskObject.model_validate(rendered)
