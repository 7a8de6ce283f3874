"""Request models answered in our words (common/validation.py): the 422's details as the
hand-written checks gave them, and the OpenAPI schema from the same declaration."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import ValidationFailed
from common.validation import check, details, schema, validated
from submit.contracts import MAX_MODEL_LENGTH, NewTask

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
