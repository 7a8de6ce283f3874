"""The client API's bodies, declared once: their limits make the checks (through
common/validation.py) and the OpenAPI schemas (taskhook/openapi.py), their `Problem`s the
sentences of a 422. Chosen over msgspec for listing every problem at once, as API.md promises
(bench/contracts.py, bench/RESULTS.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from common.errors import TASK_ERRORS
from common.states import TaskStatus
from common.validation import Problem
from lifecycle.client_webhooks import EVENTS, MAX_URL

MAX_MODEL_LENGTH = 200
# GET /v1/tasks: a page's size when `limit` is not given, and at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 100

# A client's webhook (issue 18): what is allowed depends on the settings (private addresses),
# so lifecycle/client_webhooks.py's read_webhook checks it; declared here for the schema.
Webhook = Annotated[
    Any,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_URL,
            "description": "your endpoint for this task's events: an https URL to a public "
            "address (http and private addresses only where TASKHOOK_ALLOW_PRIVATE_URLS=1). Each "
            "event POSTs the task as GET /v1/tasks/{id} renders it, signed (Standard Webhooks) "
            "with your secret (GET /v1/webhooks/secret)",
        }
    ),
]
WebhookEvents = Annotated[
    Any,
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": list(EVENTS)},
            "description": "which events to send (default: completed = any terminal state)",
        }
    ),
]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


class NewTask(BaseModel):
    """A task to run."""

    # Fields in the order a 422 lists their problems.
    model_config = ConfigDict(extra="forbid", strict=True)

    # Absent: routed; present, it must name a configured vendor (checked against the runtime's,
    # so its Problem is written there). A null is a mistake like any other.
    vendor: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": "string",
                "description": "pin the task to one of the configured vendors: no failover; "
                "default: routed, else the first vendor",
            }
        ),
    ] = None
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_MODEL_LENGTH,
            json_schema_extra={"pattern": r"\S"},
            description="a model named in TASKHOOK_ROUTES (routed to the first healthy vendor "
            "serving it), or a vendor's own model id (Replicate: 'owner/name', "
            "'owner/name:version' or a 64-hex version id; fal: 'owner/app[/path]'; "
            "midjourney: 'midjourney', 'niji', ...): one a route lists costs that route's "
            "price at that vendor; with routes configured, others are refused (422) unless "
            "TASKHOOK_ALLOW_UNROUTED_MODELS=1",
        ),
        AfterValidator(_not_blank),
        Problem(f"required: a model name of 1-{MAX_MODEL_LENGTH} characters"),
    ]
    input: Annotated[
        dict[str, Any],
        Field(description="the model's inputs"),
        Problem("required: an object of model inputs"),
    ]
    webhook: Webhook = None
    webhook_events_filter: WebhookEvents = None


# -- responses: the task object as submit/render.py writes it ----------------------------------
# Rendering stays hand-written dicts (a model would only slow it: bench/RESULTS.md); these
# declare its shape once for OpenAPI, and tests hold the renderer to them.

TASK_ID_PATTERN = r"^tsk_[0-9a-f]{32}$"


def _timestamp(description: str) -> Any:
    return Field(json_schema_extra={"format": "date-time"}, description=description)


class ResultFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(json_schema_extra={"format": "uri"}, description="presigned S3 URL")]
    content_type: str
    bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Result(ResultFile):
    """The first stored output; `files` lists all of them when there are several."""

    files: Annotated[list[ResultFile], Field(min_length=2)] = None  # type: ignore[assignment]


class TaskError(BaseModel):
    """Why a failed task failed."""

    code: Annotated[str, Field(description=", ".join(TASK_ERRORS) + ", ...")]
    message: Annotated[
        str,
        Field(
            description="the code's fixed sentence, never details: "
            + "; ".join(f"{code}: {text}" for code, text in TASK_ERRORS.items())
        ),
    ]


class Task(BaseModel):
    """A task as the client API shows it (GET /v1/tasks/{id})."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=TASK_ID_PATTERN)]
    # The TaskStatus component (taskhook/openapi.py) describes the states once.
    status: Annotated[
        TaskStatus, WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/TaskStatus"}]})
    ]
    progress: Annotated[int, Field(ge=0, le=100, description="never decreases")]
    vendor: str
    model: str
    input: dict[str, Any]
    cost: Annotated[int, Field(ge=0, description="credits charged")]
    created_at: Annotated[str, _timestamp("when the task was accepted")]
    updated_at: Annotated[str, _timestamp("last change")]
    deadline_at: Annotated[str, _timestamp("when an unfinished task fails and is refunded")]
    completed_at: Annotated[str | None, _timestamp("when the task became terminal")]
    result: Annotated[Result | None, Field(description="completed tasks only")]
    error: Annotated[TaskError | None, Field(description="failed tasks only")]
    refunded: bool
    parent_id: Annotated[
        str | None,
        Field(pattern=TASK_ID_PATTERN, description="the task a follow-up action acts on"),
    ]


class TaskPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Annotated[list[Task], Field(max_length=MAX_LIMIT, description="newest first")]
    next_cursor: Annotated[
        str | None, Field(description="pass as `cursor` for the next page; null on the last")
    ]
