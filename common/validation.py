"""Request bodies checked by their models (pydantic), answered in our words: the one place
where the library's errors become API.md's `422 validation_error` details.

A model declares each field's limits once (they make both the check and the OpenAPI schema,
taskhook/openapi.py) and, with `Problem`, the sentence a client reads when the field is wrong:
one problem per field, unknown fields first (sorted), then the fields in the model's order,
as the hand-written checks answered before (issue 19.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from pydantic.json_schema import models_json_schema

from common.errors import ValidationFailed

M = TypeVar("M", bound=pydantic.BaseModel)

NOT_AN_OBJECT = "the body must be a JSON object"
UNKNOWN_FIELD = "unknown field"


@dataclass(frozen=True)
class Problem:
    """The client's sentence for a field that is missing or wrong (`Annotated` metadata)."""

    message: str


def check(model: type[M], body: Any) -> tuple[M | None, dict[str, str]]:
    """The model read from a decoded JSON body, or None and what is wrong: field -> message."""
    try:
        return model.model_validate(body), {}
    except pydantic.ValidationError as exc:
        return None, problems(model, exc)


def problems(model: type[pydantic.BaseModel], exc: pydantic.ValidationError) -> dict[str, str]:
    found: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        location = error["loc"]
        if not location:
            return {"": NOT_AN_OBJECT}
        name = str(location[0])
        if error["type"] == "extra_forbidden":
            found[name] = UNKNOWN_FIELD
        else:
            found.setdefault(name, problem_of(model, name))
    return found


def problem_of(model: type[pydantic.BaseModel], name: str) -> str:
    for item in model.model_fields[name].metadata:
        if isinstance(item, Problem):
            return item.message
    return "not valid"


def details(model: type[pydantic.BaseModel], found: Mapping[str, str]) -> list[dict[str, str]]:
    """API.md's `details`: unknown fields first (sorted), then the model's fields in order."""
    declared = list(model.model_fields)
    unknown = sorted(name for name in found if name not in declared)
    ordered = unknown + [name for name in declared if name in found]
    return [{"field": name, "message": found[name]} for name in ordered]


def validated(model: type[M], body: Any) -> M:
    """The model read from a body, or ValidationFailed listing every problem."""
    value, found = check(model, body)
    if value is None:
        raise ValidationFailed(details=details(model, found))
    return value


def schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as OpenAPI 3.1 shows it: without pydantic's generated titles
    and its placeholders for optional fields' absent defaults."""
    cleaned: dict[str, Any] = _clean(model.model_json_schema(mode="validation"))
    return cleaned


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _clean(value)
            for key, value in node.items()
            if key != "title" and not (key == "default" and value is None)
        }
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def components(*models: type[pydantic.BaseModel]) -> dict[str, Any]:
    """OpenAPI components for these models and every model they use, referring to each other
    as `#/components/schemas/<name>`."""
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    found: dict[str, Any] = _clean(top.get("$defs", {}))
    return found
