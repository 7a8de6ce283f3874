"""The client API's request bodies, declared once: their limits make the checks (through
common/validation.py) and the OpenAPI schemas (taskhook/openapi.py), their `Problem`s the
sentences of a 422. Chosen over msgspec for listing every problem at once, as API.md promises
(bench/contracts.py, bench/RESULTS.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from common.validation import Problem
from lifecycle.client_webhooks import EVENTS, MAX_URL

MAX_MODEL_LENGTH = 200

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
