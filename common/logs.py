"""JSON logs (structlog): one event per line, with task_id, vendor and trace_id bound.

Every webhook writes a line, so the line's cost shows in the receiver's profile: orjson
renders it for a fraction of the standard library encoder's cost (bench/RESULTS.md, "Figures
that were code comments"), and the web process caches its loggers on first use (structlog's
own advice for production).
Tests reconfigure logging between cases, which cached loggers would ignore, and the other
commands run inside them (click's runner), so only `taskhook serve` caches.

Libraries that log through the standard library (uvicorn's server errors, asyncio) are routed
through the same renderer when `stdlib=True`, so a process writes one format only. uvicorn's
own chatter (started, waiting for startup, ...) stays below the line unless the level is debug:
each process writes its own one startup line instead (taskhook/startup.py).
"""

from __future__ import annotations

import json as std_json  # the `json` parameter below names a format
import logging
import sys
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog


def _render(value: Any, *, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    try:
        return orjson.dumps(value, default=default).decode()
    except TypeError:
        # What orjson refuses and the standard encoder writes (an integer past 64 bits, a
        # non-string key): a log line must never fail the request that writes it.
        return std_json.dumps(value, default=default)


# The HTTP request being served (taskhook/middleware.py), on every line written meanwhile. A
# plain ContextVar: set and reset per request for a fraction of structlog's bind/reset.
current_request_id: ContextVar[str | None] = ContextVar("taskhook_request_id", default=None)


def add_request_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = current_request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Loggers of the standard library's kind whose INFO lines only repeat what ours say.
_CHATTY = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")


def configure_logging(
    *,
    json: bool = True,
    level: int | str = logging.INFO,
    file: TextIO | None = None,
    cache: bool = False,
    stdlib: bool = False,
) -> None:
    """`level`: a logging level or a TASKHOOK_LOG_LEVEL name."""
    if isinstance(level, str):
        level = LEVELS[level]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_render)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=file or sys.stderr),
        cache_logger_on_first_use=cache,
    )
    if stdlib:
        _route_stdlib(renderer, timestamper, level=level, file=file or sys.stderr)


def _route_stdlib(
    renderer: structlog.types.Processor,
    timestamper: structlog.types.Processor,
    *,
    level: int,
    file: TextIO,
) -> None:
    """Standard-library records (uvicorn, asyncio) as the same lines as ours."""
    handler = logging.StreamHandler(file)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                add_request_id,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        chatty = logging.getLogger(name)
        chatty.handlers[:] = []
        chatty.propagate = True
        chatty.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
