"""Issue 14.10: internals shown to clients.

Task errors carried `refusing output URL that resolves to non-public 10.0.0.1`, `cannot
resolve X: Name or service not known`, `ConnectError(...)` and the vendor's own text: a DNS
and network oracle, unreadable for an end user. Clients now get a stable code and the code's
fixed sentence (taskhook.errors.TASK_ERRORS, documented in docs/API.md); the detail stays in
the operator views.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from common.errors import TASK_ERRORS
from common.ids import parse_task_id
from common.settings import Settings
from simulator import SimulatorConfig
from simulator.signing import new_webhook_id, webhook_headers
from tests.acceptance.stack import running_stack
from tests.security.support import post_replicate_success, submit, vendor_task_id, wait_status
from tests.security.test_ssrf import operator_view

API_MD = Path(__file__).resolve().parents[2] / "docs" / "API.md"


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(
        settings, poll_after=0.5, registration_timeout=5.0, rate_limit=0, max_storage_attempts=1
    )


async def test_a_vendor_failure_shows_the_plain_sentence_only(fast: Settings) -> None:
    raw = "CUDA out of memory on worker 10.0.0.3 (Traceback: /srv/model.py line 42)"
    async with running_stack(fast, SimulatorConfig(job_seconds=2)) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            job = await vendor_task_id(stack, task_id)
            body = json.dumps(
                {"id": job, "status": "failed", "error": raw, "output": None, "logs": ""}
            ).encode()
            assert stack.settings.vendor("replicate") is not None
            secret = stack.settings.vendor("replicate").webhook_secrets[0]
            uid = parse_task_id(task_id)
            assert uid is not None
            url = stack.runtime.callback_url(task_id=uid, vendor="replicate")
            async with httpx.AsyncClient() as vendor:
                r = await vendor.post(
                    url, content=body, headers=webhook_headers(secret, new_webhook_id(), body)
                )
            assert r.status_code == 200, r.text
            final = await wait_status(client, task_id, {"failed"}, timeout=20)
            assert final["error"] == {
                "code": "vendor_failed",
                "message": "The provider could not complete this job.",
            }
            listed = (await client.get("/v1/tasks")).json()["data"]
            assert [t["error"] for t in listed] == [final["error"]]
        shown = await operator_view(stack, task_id)
        assert shown["error"]["message"] == raw


async def test_a_name_that_does_not_resolve_is_not_an_oracle(fast: Settings) -> None:
    def strict(settings: Settings, _url: str) -> Settings:
        return replace(settings, allow_private_urls=False)

    async with running_stack(fast, SimulatorConfig(job_seconds=2), configure=strict) as stack:
        async with await stack.client_for(credits=1) as client:
            task_id = await submit(client)
            r = await post_replicate_success(stack, task_id, ["https://nowhere.invalid/x.png"])
            assert r.status_code == 200, r.text
            final = await wait_status(client, task_id, {"failed"}, timeout=20)
            text = json.dumps(final)
            assert "nowhere" not in text and "resolve" not in text
            assert final["error"]["code"] == "storage_failed"
        shown = await operator_view(stack, task_id)
        assert "cannot resolve nowhere.invalid" in shown["error"]["message"]


def test_every_client_visible_task_error_is_documented() -> None:
    """One table in the code, the same table in the contract."""
    documented = dict(
        re.findall(r"^\s*\| `([a-z_]+)`[^|]*\| (.+?) \|$", API_MD.read_text(), re.MULTILINE)
    )
    assert {code: documented.get(code) for code in TASK_ERRORS} == dict(TASK_ERRORS)
