"""Turning a create-prediction request body into a :class:`CreateRequest`, or a 422.

Replicate rejects bad input synchronously with a 422 problem document; our adapter treats that
as a permanent rejection (fail + refund), so the simulator must produce it for the same
reasons — and for the ``reject-me`` prompt, which lets tests force one on purpose.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from simulator.predictions import ALL_EVENTS, EventKind

MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
VERSION_RE = re.compile(r"[0-9a-f]{64}")
UNKNOWN_MODEL = "simulator/model"
"""``model`` reported for a bare version id (the simulator has no version registry)."""

_EVENT_BY_NAME: dict[str, EventKind] = {e: e for e in ALL_EVENTS}

REJECT_WORD = "reject-me"
FAIL_WORD = "fail-me"


class RequestError(Exception):
    """An API error answer: HTTP status plus Replicate's problem-document fields."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail

    def body(self) -> dict[str, Any]:
        """The JSON body Replicate sends for this error."""
        return {"title": self.title, "detail": self.detail, "status": self.status}


def _invalid(detail: str) -> RequestError:
    return RequestError(422, "Input validation failed", detail)


@dataclass(frozen=True)
class CreateRequest:
    """A validated create call."""

    model: str
    version: str
    input: dict[str, Any]
    webhook: str | None
    events_filter: tuple[EventKind, ...]
    num_outputs: int

    @property
    def prompt(self) -> str:
        """The validated prompt."""
        return str(self.input["prompt"])


def version_for(model: str) -> str:
    """The (stable, made-up) 64-hex latest version id of a model."""
    return hashlib.sha256(model.encode()).hexdigest()


def resolve_version(value: object) -> tuple[str, str]:
    """``(model, version)`` from the ``version`` field of ``POST /v1/predictions``.

    Accepts the three forms Replicate accepts: ``<64 hex>``, ``owner/name:<64 hex>`` and
    ``owner/name`` (meaning the model's latest version).
    """
    if isinstance(value, str):
        if VERSION_RE.fullmatch(value):
            return UNKNOWN_MODEL, value
        model, sep, version = value.partition(":")
        if MODEL_RE.fullmatch(model):
            if not sep:
                return model, version_for(model)
            if VERSION_RE.fullmatch(version):
                return model, version
    raise RequestError(422, "Invalid version or not permitted", "Invalid version or not permitted")


def parse_create(raw: bytes, *, model: str | None, max_outputs: int) -> CreateRequest:
    """Validate a create body; ``model`` comes from the URL on the per-model endpoint."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("request body must be JSON") from None
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")

    if model is None:
        if "version" not in body:
            raise _invalid("version is required")
        model, version = resolve_version(body["version"])
    else:
        version = version_for(model)

    inputs = body.get("input")
    if not isinstance(inputs, dict):
        raise _invalid("input is required and must be an object")
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("input.prompt is required and must be a non-empty string")
    if REJECT_WORD in prompt:
        raise _invalid(f"input.prompt was rejected by the model ({REJECT_WORD})")
    num_outputs = inputs.get("num_outputs", 1)
    if (
        isinstance(num_outputs, bool)
        or not isinstance(num_outputs, int)
        or not 1 <= num_outputs <= max_outputs
    ):
        raise _invalid(f"input.num_outputs must be an integer from 1 to {max_outputs}")

    return CreateRequest(
        model=model,
        version=version,
        input=inputs,
        webhook=_webhook(body.get("webhook")),
        events_filter=_events_filter(body.get("webhook_events_filter")),
        num_outputs=num_outputs,
    )


def _webhook(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            url = None
        if url is not None and url.scheme in ("http", "https") and url.host:
            return value
    raise _invalid("webhook must be an http(s) URL")


def _events_filter(value: object) -> tuple[EventKind, ...]:
    if value is None:
        return ALL_EVENTS
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid("webhook_events_filter must be a list of event names")
    unknown = [v for v in value if v not in _EVENT_BY_NAME]
    if unknown:
        raise _invalid(
            f"webhook_events_filter: unknown events {unknown}; allowed {list(ALL_EVENTS)}"
        )
    return tuple(_EVENT_BY_NAME[v] for v in dict.fromkeys(value))
