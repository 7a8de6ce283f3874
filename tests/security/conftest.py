"""The outside review's cases (issue 14), each driven through the running app.

The app is served over httpx.ASGITransport with `raise_app_exceptions=False`, so a handler that
blows up answers 500 here exactly as it would to a client, instead of raising into the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from lifecycle.runtime import Runtime
from tests.factories import make_user


@pytest.fixture
async def app(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app as a client sees it; built when first used, after the test's settings."""
    from taskhook.app import create_app

    transport = httpx.ASGITransport(
        app=create_app(runtime.settings, runtime=runtime), raise_app_exceptions=False
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def auth_header(runtime: Runtime, *, credits: int = 10) -> dict[str, str]:
    """A new user's `Authorization` header."""
    async with runtime.pool.acquire() as conn:
        _, key = await make_user(conn, credits=credits)
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
