"""W3C traceparent parsing and propagation."""

from __future__ import annotations

import pytest

from common.tracing import current_trace_id, outgoing_headers, task_context, trace_id_from

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_valid_traceparent_gives_its_trace_id() -> None:
    assert trace_id_from(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    assert trace_id_from(f"00-{TRACE.upper()}-00F067AA0BA902B7-00") == TRACE


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"01-{TRACE}-00f067aa0ba902b7-01",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",
    ],
)
def test_an_invalid_traceparent_gives_a_new_trace(value: str | None) -> None:
    made = trace_id_from(value)
    assert len(made) == 32 and made != TRACE and int(made, 16) >= 0


def test_a_hex_request_id_is_used_otherwise() -> None:
    assert trace_id_from(None, TRACE) == TRACE
    assert trace_id_from(None, "order-42") != "order-42"


def test_calls_in_a_task_context_carry_its_trace_with_a_new_span() -> None:
    assert outgoing_headers() == {}
    with task_context(task_id="tsk_1", vendor="replicate", trace_id=TRACE):
        first, second = outgoing_headers()["traceparent"], outgoing_headers()["traceparent"]
        assert current_trace_id.get() == TRACE
    assert first.startswith(f"00-{TRACE}-") and first.endswith("-01")
    assert first != second  # each call is its own span
    assert outgoing_headers() == {}
