"""The client API (API.md "Client API" and "Errors") as an OpenAPI 3.1 document.

Built from the same constants the handlers use, so limits and enums cannot drift, and served
unauthenticated at `GET /openapi.json`. It describes what the code does, error paths included:
which statuses each operation can answer, which error codes each status carries, and which
responses carry `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from common.errors import (
    TASK_ERRORS,
    ActiveTaskLimit,
    AlreadyFinished,
    AlreadyTerminal,
    IdempotencyConflict,
    InsufficientCredits,
    KeyLimit,
    NotFound,
    ParentNotReady,
    ParentNotSucceeded,
    PayloadTooLarge,
    RateLimited,
    RequestInvalid,
    TaskhookError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from common.states import TaskStatus
from lifecycle.client_webhooks import EVENTS as WEBHOOK_EVENTS
from lifecycle.client_webhooks import MAX_URL as MAX_WEBHOOK_URL
from submit.accept import MAX_IDEMPOTENCY_KEY
from submit.listing import DEFAULT_LIMIT, MAX_LIMIT
from submit.streaming import MAX_EVENT_ID_DIGITS

JsonObject = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
TASK_ID_PATTERN = r"^tsk_[0-9a-f]{32}$"
USER_ID_PATTERN = r"^usr_[0-9a-f]{32}$"
MAX_MODEL_LENGTH = 200  # submit/routes.py `_validate`
STATUS_FILTERS = ["active", *(s.value for s in TaskStatus)]

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"
_PARAMETERS = "#/components/parameters/"


def _ref(target: str) -> JsonObject:
    return {"$ref": target}


def _nullable(schema: JsonObject) -> JsonObject:
    return {"oneOf": [schema, {"type": "null"}]}


def _timestamp(description: str) -> JsonObject:
    return {"type": "string", "format": "date-time", "description": description}


def _json(schema: JsonObject) -> JsonObject:
    return {"application/json": {"schema": schema}}


def _error_schema(codes: list[str], *, details: bool) -> JsonObject:
    """The Error object, narrowed to the codes (and the `details`) one status can carry."""
    inner: JsonObject = {"properties": {"code": {"enum": codes}}}
    if details:
        inner["required"] = ["code", "message", "details"]
    else:
        inner["not"] = {"required": ["details"]}
    return {"allOf": [_ref(_SCHEMAS + "Error"), {"properties": {"error": inner}}]}


def _error_response(
    description: str,
    errors: Sequence[type[TaskhookError] | str],
    *,
    details: bool = False,
    headers: JsonObject | None = None,
) -> JsonObject:
    codes = [e if isinstance(e, str) else e.code for e in errors]
    response: JsonObject = {
        "description": description,
        "content": _json(_error_schema(codes, details=details)),
    }
    if headers:
        response["headers"] = headers
    return response


def _retry_after(*, required: bool, description: str) -> JsonObject:
    return {
        "Retry-After": {
            "description": description,
            "required": required,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }


_WEBHOOK_FIELDS: JsonObject = {
    "webhook": {
        "type": "string",
        "maxLength": MAX_WEBHOOK_URL,
        "description": "your endpoint for this task's events: an https URL to a public address "
        "(http and private addresses only where TASKHOOK_ALLOW_PRIVATE_URLS=1). Each event "
        "POSTs the task as GET /v1/tasks/{id} renders it, signed (Standard Webhooks) with your "
        "secret (GET /v1/webhooks/secret)",
    },
    "webhook_events_filter": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
        "description": "which events to send (default: completed = any terminal state)",
    },
}


def _schemas() -> JsonObject:
    result_file: JsonObject = {
        "type": "object",
        "required": ["url", "content_type", "bytes", "sha256"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "format": "uri", "description": "presigned S3 URL"},
            "content_type": {"type": "string"},
            "bytes": {"type": "integer", "minimum": 0},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    }
    return {
        "TaskStatus": {
            "type": "string",
            "enum": [s.value for s in TaskStatus],
            "description": "pending -> submitted -> processing -> storing -> completed; or "
            "failed / canceled from any non-terminal state. Forward only.",
        },
        "ResultFile": result_file,
        "Result": {
            "description": "The first stored output; `files` lists all of them when there are "
            "several.",
            "type": "object",
            "required": ["url", "content_type", "bytes", "sha256"],
            "additionalProperties": False,
            "properties": {
                **result_file["properties"],
                "files": {
                    "type": "array",
                    "minItems": 2,
                    "items": _ref(_SCHEMAS + "ResultFile"),
                },
            },
        },
        "TaskError": {
            "description": "Why a failed task failed.",
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": ", ".join(TASK_ERRORS) + ", ...",
                },
                "message": {
                    "type": "string",
                    "description": "the code's fixed sentence, never details: "
                    + "; ".join(f"{code}: {text}" for code, text in TASK_ERRORS.items()),
                },
            },
        },
        "Task": {
            "type": "object",
            "required": [
                "id",
                "status",
                "progress",
                "vendor",
                "model",
                "input",
                "cost",
                "created_at",
                "updated_at",
                "deadline_at",
                "completed_at",
                "result",
                "error",
                "refunded",
                "parent_id",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": TASK_ID_PATTERN},
                "status": _ref(_SCHEMAS + "TaskStatus"),
                "progress": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "never decreases",
                },
                "vendor": {"type": "string"},
                "model": {"type": "string"},
                "input": {"type": "object"},
                "cost": {"type": "integer", "minimum": 0, "description": "credits charged"},
                "created_at": _timestamp("when the task was accepted"),
                "updated_at": _timestamp("last change"),
                "deadline_at": _timestamp("when an unfinished task fails and is refunded"),
                "completed_at": _nullable(_timestamp("when the task became terminal")),
                "result": _nullable(
                    {**_ref(_SCHEMAS + "Result"), "description": "completed tasks only"}
                ),
                "error": _nullable(
                    {**_ref(_SCHEMAS + "TaskError"), "description": "failed tasks only"}
                ),
                "refunded": {"type": "boolean"},
                "parent_id": _nullable(
                    {
                        "type": "string",
                        "pattern": TASK_ID_PATTERN,
                        "description": "the task a follow-up action acts on",
                    }
                ),
            },
        },
        "TaskPage": {
            "type": "object",
            "required": ["data", "next_cursor"],
            "additionalProperties": False,
            "properties": {
                "data": {
                    "type": "array",
                    "maxItems": MAX_LIMIT,
                    "items": _ref(_SCHEMAS + "Task"),
                    "description": "newest first",
                },
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "pass as `cursor` for the next page; null on the last",
                },
            },
        },
        "NewTask": {
            "type": "object",
            "required": ["model", "input"],
            "additionalProperties": False,
            "properties": {
                "model": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_MODEL_LENGTH,
                    "pattern": r"\S",
                    "description": "a model named in TASKHOOK_ROUTES (routed to the first healthy "
                    "vendor serving it), or a vendor's own model id (Replicate: 'owner/name', "
                    "'owner/name:version' or a 64-hex version id; fal: 'owner/app[/path]'; "
                    "midjourney: 'midjourney', 'niji', ...): one a route lists costs that "
                    "route's price at that vendor; with routes configured, others are refused "
                    "(422) unless TASKHOOK_ALLOW_UNROUTED_MODELS=1",
                },
                "input": {"type": "object", "description": "the model's inputs"},
                "vendor": {
                    "type": "string",
                    "description": "pin the task to one of the configured vendors (replicate, "
                    "fal, midjourney): no failover; default: routed, else the first vendor",
                },
                **_WEBHOOK_FIELDS,
            },
        },
        "WebhookSecret": {
            "type": "object",
            "required": ["key"],
            "additionalProperties": False,
            "properties": {
                "key": {
                    "type": "string",
                    "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                    "description": "your Standard Webhooks signing secret",
                }
            },
        },
        "WebhookAttempts": {
            "type": "object",
            "required": ["task_id", "events"],
            "additionalProperties": False,
            "properties": {
                "task_id": {"type": "string", "pattern": TASK_ID_PATTERN},
                "events": {
                    "type": "array",
                    "description": "the task's webhook events, oldest first",
                    "items": {
                        "type": "object",
                        "required": [
                            "webhook_id",
                            "event",
                            "task_status",
                            "url",
                            "state",
                            "created_at",
                            "delivered_at",
                            "next_attempt_at",
                            "attempts",
                        ],
                        "properties": {
                            "webhook_id": {"type": "string", "description": "webhook-id sent"},
                            "event": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
                            "task_status": _ref(_SCHEMAS + "TaskStatus"),
                            "url": {"type": "string"},
                            "state": {
                                "type": "string",
                                "enum": ["pending", "delivered", "failed", "gone", "superseded"],
                            },
                            "created_at": _timestamp("when the move that caused it was made"),
                            "delivered_at": _nullable(_timestamp("when a 2xx came")),
                            "next_attempt_at": _nullable(_timestamp("next try (pending only)")),
                            "attempts": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": [
                                        "attempt",
                                        "sent_at",
                                        "duration_ms",
                                        "status_code",
                                        "error",
                                        "response_body",
                                    ],
                                    "properties": {
                                        "attempt": {"type": "integer", "minimum": 1},
                                        "sent_at": _timestamp("when it was sent"),
                                        "duration_ms": {"type": "integer"},
                                        "status_code": {"type": ["integer", "null"]},
                                        "error": {"type": ["string", "null"]},
                                        "response_body": {
                                            "type": ["string", "null"],
                                            "description": "the answer's first 1024 bytes",
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "Me": {
            "type": "object",
            "required": ["id", "email", "credits"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": USER_ID_PATTERN},
                "email": {"type": "string"},
                "credits": {"type": "integer"},
            },
        },
        "FieldProblem": {
            "type": "object",
            "required": ["field", "message"],
            "additionalProperties": False,
            "properties": {
                "field": {"type": "string", "description": "empty for the body as a whole"},
                "message": {"type": "string"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string", "minLength": 1},
                        "details": {
                            "type": "array",
                            "minItems": 1,
                            "items": _ref(_SCHEMAS + "FieldProblem"),
                            "description": "validation_error only: every problem at once",
                        },
                        "price": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "insufficient_credits only: what the task costs",
                        },
                        "balance": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "insufficient_credits only: the user's credits now",
                        },
                    },
                }
            },
        },
    }


def _responses() -> JsonObject:
    return {
        "InvalidJson": _error_response("The body is not valid JSON.", [RequestInvalid]),
        "Unauthorized": _error_response(
            "No API key, or not a valid one.",
            [Unauthorized],
        ),
        "InsufficientCredits": _error_response(
            "Not enough credits for the task: the message and the fields `price` and `balance` "
            "say what it costs and what the user has.",
            [InsufficientCredits],
        ),
        "NotFound": _error_response(
            "No such task, or another user's.",
            [NotFound],
        ),
        # Any path above with a method it does not list; not attached to an operation.
        "MethodNotAllowed": _error_response(
            "The path exists but not with this method.", ["method_not_allowed"]
        ),
        "PayloadTooLarge": _error_response("The body is larger than 1 MiB.", [PayloadTooLarge]),
        "UnsupportedMediaType": _error_response(
            "The body is not sent as `application/json`.", [UnsupportedMediaType]
        ),
        "ValidationError": _error_response(
            "Well-formed but not valid; `details` lists every problem.",
            [ValidationFailed],
            details=True,
        ),
        "RateLimited": _error_response(
            "More requests this minute than TASKHOOK_RATE_LIMIT allows.",
            [RateLimited],
            headers=_retry_after(required=True, description="seconds until the window resets"),
        ),
        "Unavailable": _error_response(
            "The database is unreachable, no vendor is configured, or a concurrent request "
            "with the same Idempotency-Key could not be settled; nothing was changed.",
            [Unavailable],
            headers=_retry_after(required=False, description="seconds to wait before retrying"),
        ),
    }


def _parameters() -> JsonObject:
    return {
        "TaskId": {
            "name": "task_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": TASK_ID_PATTERN},
        },
    }


def _common(*statuses: int) -> JsonObject:
    """Responses every authenticated operation can give, plus the given shared ones."""
    names = {
        401: "Unauthorized",
        404: "NotFound",
        422: "ValidationError",
        429: "RateLimited",
        503: "Unavailable",
    }
    chosen = sorted({401, 429, 503, *statuses})
    return {str(status): _ref(_RESPONSES + names[status]) for status in chosen}


def _paths() -> JsonObject:
    task_response = {"content": _json(_ref(_SCHEMAS + "Task"))}
    task_id = _ref(_PARAMETERS + "TaskId")
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "A retry with the same key returns the same task; the "
        "same key with another body is a 409.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    }
    return {
        "/v1/tasks": {
            "post": {
                "operationId": "createTask",
                "summary": "Submit a task",
                "description": "Charges the task's cost atomically with the insert and answers "
                "at once; the vendor is called afterwards.",
                "parameters": [
                    idempotency_key,
                    {
                        "name": "X-Request-ID",
                        "in": "header",
                        "required": False,
                        "description": "Trace id recorded with the task (default: generated).",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": _json(_ref(_SCHEMAS + "NewTask")),
                },
                "responses": {
                    "202": {
                        **task_response,
                        "description": "Accepted (or, with a known Idempotency-Key, replayed).",
                        "headers": {
                            "Location": {
                                "required": True,
                                "description": "/v1/tasks/{id}",
                                "schema": {
                                    "type": "string",
                                    "pattern": r"^/v1/tasks/tsk_[0-9a-f]{32}$",
                                },
                            },
                            "Idempotent-Replayed": {
                                "required": False,
                                "description": "present on a replayed answer",
                                "schema": {"type": "string", "enum": ["true"]},
                            },
                        },
                        "links": {
                            "GetTask": {
                                "operationId": "getTask",
                                "parameters": {"task_id": "$response.body#/id"},
                            },
                            "CancelTask": {
                                "operationId": "cancelTask",
                                "parameters": {"task_id": "$response.body#/id"},
                            },
                        },
                    },
                    "400": _ref(_RESPONSES + "InvalidJson"),
                    "402": _ref(_RESPONSES + "InsufficientCredits"),
                    "409": _error_response(
                        "The Idempotency-Key was used with another body.", [IdempotencyConflict]
                    ),
                    "413": _ref(_RESPONSES + "PayloadTooLarge"),
                    "415": _ref(_RESPONSES + "UnsupportedMediaType"),
                    **_common(422),
                    "429": _error_response(
                        "Rate limited (with Retry-After), or at TASKHOOK_MAX_ACTIVE_TASKS "
                        "unfinished tasks (without: submit more when some finish).",
                        [RateLimited, ActiveTaskLimit],
                        headers=_retry_after(
                            required=False, description="with rate_limited: seconds to wait"
                        ),
                    ),
                },
            },
            "get": {
                "operationId": "listTasks",
                "summary": "List your tasks, newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "`active` = not terminal",
                        "schema": {"type": "string", "enum": STATUS_FILTERS},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "`next_cursor` of the previous page, with the same status",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page.",
                        "content": _json(_ref(_SCHEMAS + "TaskPage")),
                    },
                    **_common(422),
                },
            },
        },
        "/v1/tasks/{task_id}": {
            "parameters": [task_id],
            "get": {
                "operationId": "getTask",
                "summary": "Read one task",
                "responses": {
                    "200": {**task_response, "description": "The task."},
                    **_common(404),
                },
            },
        },
        "/v1/tasks/{task_id}/cancel": {
            "parameters": [task_id],
            "post": {
                "operationId": "cancelTask",
                "summary": "Cancel a task",
                "description": "Refunds the task and tells the vendor (best effort); only "
                "until the vendor reports success.",
                "responses": {
                    "200": {**task_response, "description": "The canceled task."},
                    "409": _error_response(
                        "The vendor already finished the task (`already_finished`: storing or "
                        "completed, not refunded), or it failed or was canceled.",
                        [AlreadyFinished, AlreadyTerminal],
                    ),
                    **_common(404),
                },
            },
        },
        "/v1/tasks/{task_id}/actions": {
            "parameters": [task_id],
            "post": {
                "operationId": "createAction",
                "summary": "Upscale or vary a finished image: a new task with its own charge",
                "description": "Only vendors with follow-up actions (midjourney). A parent the "
                "vendor has finished but taskhook has not caught up with yet is confirmed with "
                "the vendor first, not refused. Honours Idempotency-Key like submit.",
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["action"],
                            "additionalProperties": False,
                            "properties": {
                                "action": {
                                    "type": "string",
                                    "enum": ["upscale", "variation", "reroll"],
                                },
                                "index": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 4,
                                    "description": "which image of the grid (upscale, variation)",
                                },
                                **_WEBHOOK_FIELDS,
                            },
                        }
                    ),
                },
                "responses": {
                    "202": {**task_response, "description": "The new (child) task."},
                    "400": _ref(_RESPONSES + "InvalidJson"),
                    "402": _ref(_RESPONSES + "InsufficientCredits"),
                    "413": _ref(_RESPONSES + "PayloadTooLarge"),
                    "415": _ref(_RESPONSES + "UnsupportedMediaType"),
                    "409": _error_response(
                        "The parent failed or was canceled, has not finished yet, or the "
                        "Idempotency-Key was used with another body.",
                        [ParentNotSucceeded, ParentNotReady, IdempotencyConflict],
                    ),
                    **_common(404, 422),
                },
            },
        },
        "/v1/tasks/{task_id}/events": {
            "parameters": [task_id],
            "get": {
                "operationId": "taskEvents",
                "summary": "Server-Sent Events of one task until it is terminal",
                "description": "One `task` event per change (heartbeat comments in between); "
                "the stream closes after a terminal state. EventSource cannot send headers, so "
                "the key may also be passed as `?key=`.",
                "security": [{"bearerAuth": []}, {"queryKey": []}],
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "skip the events up to this id (an `id` the stream "
                        "sent; anything else is a 422)",
                        "schema": {
                            "type": "string",
                            "pattern": f"^[0-9]{{1,{MAX_EVENT_ID_DIGITS}}}$",
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream; each event is described below.",
                        "headers": {
                            "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}},
                        },
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "object",
                                    "required": ["event", "data", "id"],
                                    "properties": {
                                        "event": {"const": "task"},
                                        "id": {
                                            "type": "string",
                                            "pattern": "^[0-9]+$",
                                            "description": "grows with every change",
                                        },
                                        "data": {
                                            "type": "string",
                                            "contentMediaType": "application/json",
                                            "contentSchema": _ref(_SCHEMAS + "Task"),
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **_common(404, 422),
                },
            },
        },
        "/v1/tasks/{task_id}/webhook_attempts": {
            "parameters": [task_id],
            "get": {
                "operationId": "taskWebhookAttempts",
                "summary": "What was sent to the task's webhook, when, and the answers",
                "responses": {
                    "200": {
                        "description": "The task's webhook events and their attempts.",
                        "content": _json(_ref(_SCHEMAS + "WebhookAttempts")),
                    },
                    **_common(404),
                },
            },
        },
        "/v1/webhooks/secret": {
            "get": {
                "operationId": "getWebhookSecret",
                "summary": "Your webhook signing secret (made on first use)",
                "responses": {
                    "200": {
                        "description": "The current secret.",
                        "content": _json(_ref(_SCHEMAS + "WebhookSecret")),
                    },
                    **_common(),
                },
            },
        },
        "/v1/webhooks/secret/rotate": {
            "post": {
                "operationId": "rotateWebhookSecret",
                "summary": "A new signing secret; the previous one keeps signing for 24 hours",
                "responses": {
                    "200": {
                        "description": "The new current secret.",
                        "content": _json(_ref(_SCHEMAS + "WebhookSecret")),
                    },
                    **_common(),
                },
            },
        },
        "/v1/me": {
            "get": {
                "operationId": "getMe",
                "summary": "Who you are and your credits",
                "responses": {
                    "200": {"description": "You.", "content": _json(_ref(_SCHEMAS + "Me"))},
                    **_common(),
                },
            },
        },
    }


KEY_ID_PATTERN = r"^key_[0-9a-f]{32}$"
KEY_LOCATION_PATTERN = r"^/v1/keys/key_[0-9a-f]{32}$"
_TIME_OR_NULL: JsonObject = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}


def _account_schemas() -> JsonObject:
    """Keys, usage and the model catalogue (issue 17)."""
    key_properties: JsonObject = {
        "id": {"type": "string", "pattern": KEY_ID_PATTERN},
        "prefix": {"type": "string", "description": "the key's first characters"},
        "created_at": _timestamp("when it was made"),
        "revoked_at": {**_TIME_OR_NULL, "description": "when it was revoked"},
        "current": {"type": "boolean", "description": "the key of this request"},
    }
    key_required = ["id", "prefix", "created_at", "revoked_at", "current"]
    return {
        "ApiKey": {
            "type": "object",
            "required": key_required,
            "additionalProperties": False,
            "properties": key_properties,
        },
        "NewApiKey": {
            "type": "object",
            "required": [*key_required, "api_key"],
            "additionalProperties": False,
            "properties": {
                **key_properties,
                "api_key": {"type": "string", "description": "the key itself, shown only now"},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "price", "vendors", "description", "route"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "description": "what to post as `model`"},
                "price": {"type": "integer", "minimum": 0, "description": "credits per task now"},
                "vendors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["vendor", "available", "price"],
                        "additionalProperties": False,
                        "properties": {
                            "vendor": {"type": "string"},
                            "available": {"type": "boolean"},
                            "price": {"type": "integer", "minimum": 0},
                        },
                    },
                },
                "description": {"type": "string"},
                "route": {
                    "type": "boolean",
                    "description": "a route name; false: a vendor's model id, post it with "
                    "its `vendor`",
                },
            },
        },
        "LedgerEntry": {
            "type": "object",
            "required": ["kind", "amount", "reason", "task", "created_at"],
            "additionalProperties": False,
            "properties": {
                "kind": {"type": "string", "enum": ["grant", "charge", "refund", "adjust"]},
                "amount": {"type": "integer", "description": "negative for a charge"},
                "reason": {"type": ["string", "null"], "description": "an operator's note"},
                "task": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["id", "model", "status"],
                            "additionalProperties": False,
                            "properties": {
                                "id": {"type": "string", "pattern": TASK_ID_PATTERN},
                                "model": {"type": "string"},
                                "status": {"type": "string", "enum": [s.value for s in TaskStatus]},
                            },
                        },
                    ]
                },
                "created_at": _timestamp("when it was written"),
            },
        },
    }


def _account_paths() -> JsonObject:
    """Self-service keys and usage (issue 17.2)."""
    return {
        "/v1/keys": {
            "post": {
                "operationId": "createKey",
                "summary": "Make another API key (shown whole only in this answer)",
                "responses": {
                    "201": {
                        "description": "The new key.",
                        "content": _json(_ref(_SCHEMAS + "NewApiKey")),
                        "headers": {
                            "Location": {
                                "required": True,
                                "schema": {
                                    "type": "string",
                                    "pattern": r"^/v1/keys/key_[0-9a-f]{32}$",
                                },
                            }
                        },
                    },
                    "409": _error_response(
                        "The user already holds the most unrevoked keys allowed.", [KeyLimit]
                    ),
                    **_common(),
                },
            },
            "get": {
                "operationId": "listKeys",
                "summary": "Your API keys (prefixes only), newest first, revoked ones too",
                "responses": {
                    "200": {
                        "description": "Your keys.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["data"],
                                "additionalProperties": False,
                                "properties": {
                                    "data": {"type": "array", "items": _ref(_SCHEMAS + "ApiKey")}
                                },
                            }
                        ),
                    },
                    **_common(),
                },
            },
        },
        "/v1/keys/{key_id}": {
            "parameters": [
                {
                    "name": "key_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": KEY_ID_PATTERN},
                }
            ],
            "delete": {
                "operationId": "revokeKey",
                "summary": "Revoke one of your keys: refused at once by every process",
                "responses": {
                    "200": {
                        "description": "The revoked key.",
                        "content": _json(_ref(_SCHEMAS + "ApiKey")),
                    },
                    **_common(404),
                },
            },
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The models this deployment serves, their prices and vendors now",
                "responses": {
                    "200": {
                        "description": "The catalogue.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["data"],
                                "additionalProperties": False,
                                "properties": {
                                    "data": {"type": "array", "items": _ref(_SCHEMAS + "Model")}
                                },
                            }
                        ),
                    },
                    **_common(),
                },
            },
        },
        "/v1/me/usage": {
            "get": {
                "operationId": "getUsage",
                "summary": "Your ledger, newest first: charges, refunds, grants, adjustments",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "`next_cursor` of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One page.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["data", "credits", "next_cursor"],
                                "additionalProperties": False,
                                "properties": {
                                    "data": {
                                        "type": "array",
                                        "items": _ref(_SCHEMAS + "LedgerEntry"),
                                    },
                                    "credits": {"type": "integer", "description": "balance now"},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        ),
                    },
                    **_common(422),
                },
            },
        },
    }


def build_openapi() -> JsonObject:
    """A fresh copy of the document (callers may mutate it)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "taskhook client API",
            "version": "1",
            "description": "Run slow, unreliable third-party AI jobs behind a clean API. "
            'Every error is `{"error": {"code", "message"}}`.',
        },
        "security": [{"bearerAuth": []}],
        "paths": {**_paths(), **_account_paths()},
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <api key>` (from "
                    "`taskhook users create`)",
                },
                "queryKey": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "key",
                    "description": "the API key as `?key=`, for EventSource (events only)",
                },
            },
            "schemas": {**_schemas(), **_account_schemas()},
            "responses": _responses(),
            "parameters": _parameters(),
        },
    }


OPENAPI: JsonObject = build_openapi()


async def openapi_json(_request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)
