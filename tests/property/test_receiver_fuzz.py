"""Fuzzing the webhook receiver: whatever arrives, no 5xx, and bad input changes nothing.

For every vendor (Replicate's Standard Webhooks, fal's ED25519, midjourney-proxy's unsigned
callbacks), bodies and headers are generated; some are signed correctly (so the parser is
reached) and some not. A correctly signed body that is a valid update may move the task;
anything else must leave the task exactly as it was. An unsigned vendor's body never moves it:
it is only a hint, and the vendor (unreachable here) is never reached.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.settings import FalSettings, MidjourneySettings, Settings
from simulator.signing import webhook_headers
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.factories import make_task, make_user
from vendors.fal import signed_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
prediction_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=30), st.integers(), st.none()),
        "status": st.one_of(
            st.sampled_from(
                ["starting", "processing", "succeeded", "failed", "canceled", "aborted", "weird"]
            ),
            json_values,
        ),
        "output": json_values,
        "logs": st.one_of(st.text(max_size=60), json_values),
        "error": json_values,
    },
)
fal_like = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.one_of(st.text(max_size=30), st.integers(), st.none()),
        "status": st.one_of(st.sampled_from(["OK", "ERROR", "IN_PROGRESS"]), json_values),
        "payload": st.one_of(
            json_values, st.just({"images": [{"url": "http://93.184.216.34/a.png"}]})
        ),
        "error": json_values,
    },
)
midjourney_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=30), st.integers(), st.none()),
        "status": st.one_of(
            st.sampled_from(["SUBMITTED", "IN_PROGRESS", "SUCCESS", "FAILURE", "MODAL"]),
            json_values,
        ),
        "progress": st.one_of(st.text(max_size=6), json_values),
        "imageUrl": json_values,
        "failReason": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.one_of(prediction_like, fal_like, midjourney_like).map(lambda v: json.dumps(v).encode()),
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
deliveries = st.lists(
    st.tuples(
        bodies,
        st.sampled_from(["good", "none", "garbage", "stale"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "webhook-id",
                    "webhook-timestamp",
                    "webhook-signature",
                    "content-type",
                    "x-fal-webhook-request-id",
                    "x-fal-webhook-timestamp",
                    "x-fal-webhook-signature",
                ]
            ),
            header_text,
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=8,
)


FAL_KEY = Ed25519PrivateKey.generate()
FAL_JWKS = "http://fal.invalid/.well-known/jwks.json"


def fal_vendor_http() -> httpx.AsyncClient:
    """fal's JWKS (our test key); every other vendor call is refused (never reached)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == FAL_JWKS:
            raw = FAL_KEY.public_key().public_bytes_raw()
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            return httpx.Response(200, json={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]})
        raise httpx.ConnectError("no vendor here", request=request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def signed(vendor: str, n: int, body: bytes, stamp: int) -> dict[str, str]:
    if vendor == "replicate":
        return webhook_headers(TEST_WEBHOOK_SECRET, f"msg_{n}", body, timestamp=stamp)
    if vendor == "fal":
        try:
            request_id = str(json.loads(body).get("request_id"))
        except (ValueError, AttributeError, UnicodeDecodeError):
            request_id = f"req-{n}"
        if not (request_id.isascii() and request_id.isprintable()):
            # A header carries only visible ASCII (httpx refuses to send anything else), and so
            # does fal's: a generated id that is not one is not a webhook fal could send.
            request_id = f"req-{n}"
        message = signed_message(
            request_id=request_id, user_id="u1", timestamp=str(stamp), body=body
        )
        return {
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": "u1",
            "x-fal-webhook-timestamp": str(stamp),
            "x-fal-webhook-signature": FAL_KEY.sign(message).hex(),
        }
    return {}  # midjourney-proxy signs nothing


async def scenario(
    settings: Settings, vendor: str, plan: list[tuple[bytes, str, dict[str, str]]]
) -> None:
    settings = replace(
        settings,
        fal=FalSettings(
            api_key="k", queue_base="http://fal.invalid", jwks_url=FAL_JWKS, user_id="u1"
        ),
        midjourney=MidjourneySettings(api_base="http://mj.invalid"),
    )
    async with open_runtime(settings, pool_size=4, http=fal_vendor_http()) as rt:
        async with rt.pool.acquire() as conn:
            user_id, _ = await make_user(conn, credits=1)
            task_id = await make_task(conn, user_id, vendor=vendor)
        app = create_app(settings, runtime=rt)
        url = rt.callback_url(task_id=task_id, vendor=vendor).removeprefix("http://testserver")
        # a crash must come back as the 500 a vendor would see, not as an exception here
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            for n, (body, signing, noise) in enumerate(plan):
                headers: dict[str, Any] = {}
                if signing in ("good", "stale"):
                    stamp = int(time.time()) - (1000 if signing == "stale" else 0)
                    headers = signed(vendor, n, body, stamp)
                if signing == "garbage":
                    headers = dict(noise)
                async with rt.pool.acquire() as conn:
                    before = await conn.fetchrow(
                        "SELECT status, progress, vendor_task_id, "
                        "updated_at FROM tasks WHERE id=$1",
                        task_id,
                    )
                r = await c.post(url, content=body, headers=headers)
                assert r.status_code < 500, (r.status_code, r.text, body)
                assert r.status_code in (200, 400, 401, 413), r.status_code
                assert "error" in r.json() or r.json().get("status") in (
                    "applied",
                    "duplicate",
                    "confirming",
                )
                await rt.drain()  # an unsigned hint's confirmation ran (and failed) by now
                async with rt.pool.acquire() as conn:
                    after = await conn.fetchrow(
                        "SELECT status, progress, vendor_task_id, "
                        "updated_at FROM tasks WHERE id=$1",
                        task_id,
                    )
                if r.status_code != 200 or r.json()["status"] != "applied":
                    assert after is not None
                    assert before is not None
                    assert dict(after) == dict(before) or (
                        # a stale-but-recorded event may still fill in the vendor's id
                        after["status"] == before["status"] and before["vendor_task_id"] is None
                    )


# No shrinking: each example opens a runtime, so shrinking a failure would take minutes; the
# first failing plan is reported as found.
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=deliveries)
@pytest.mark.parametrize("vendor", ["replicate", "fal", "midjourney"])
def test_receiver_never_fails_and_bad_input_changes_nothing(
    settings: Settings, vendor: str, plan: Any
) -> None:
    asyncio.run(scenario(settings, vendor, plan))
