"""Log lines (common/logs.py): orjson renders them, and what it refuses still gets written."""

from __future__ import annotations

import io
import json
import uuid

import structlog

from common.logs import configure_logging


def test_a_line_orjson_refuses_is_still_written() -> None:
    out = io.StringIO()
    configure_logging(json=True, file=out)
    try:
        task_id = uuid.uuid4()
        log = structlog.get_logger()
        log.info("plain", task_id=task_id)
        # An integer past 64 bits and a non-string key: orjson raises on both.
        log.info("odd", seed=2**70, counts={1: "x"})
    finally:
        configure_logging(json=True)
    plain, odd = (json.loads(line) for line in out.getvalue().splitlines())
    assert plain["event"] == "plain" and plain["task_id"] == str(task_id)
    assert odd["event"] == "odd" and odd["seed"] == 2**70 and odd["counts"] == {"1": "x"}
