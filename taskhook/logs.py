"""JSON logs (structlog): one event per line, with task_id, vendor and trace_id bound.

Every webhook writes a line, so the line's cost shows in the receiver's profile: orjson
renders it (about 4x faster than the standard library's encoder here), and long-lived
processes cache their loggers on first use (structlog's own advice for production). Tests
reconfigure logging between cases, which cached loggers would ignore, so they do not cache.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog


def _render(value: Any, *, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    return orjson.dumps(value, default=default).decode()


def configure_logging(
    *,
    json: bool = True,
    level: int = logging.INFO,
    file: TextIO | None = None,
    cache: bool = False,
) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_render)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file or sys.stderr),
        cache_logger_on_first_use=cache,
    )
