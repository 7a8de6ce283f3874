"""Headless Chromium (Debian's `chromium`) driven by Playwright, against a whole taskhook.

Playwright's own browser download is never used: we launch the system binary. When it is
missing the browser tests are skipped, with the reason; the suite installs nothing (.ci/run
installs Debian's `chromium` first, so CI on a fresh machine runs them).
One browser serves the whole session; each test gets a fresh context (own storage) and its own
stack (database, simulator, web app, worker, reconciler).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from simulator import SimulatorConfig
from tests.acceptance.stack import Stack, running_stack

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the `test` extra installs it
    HAVE_PLAYWRIGHT = False

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HERE = Path(__file__).parent
_chromium_problem: str | None = None  # set when the browser could not be made available


def _chromium_missing() -> str | None:
    """None when /usr/bin/chromium is there, else why the browser tests cannot run. The suite
    installs nothing: .ci/run installs Debian's `chromium` before the tests when it is missing."""
    if Path(CHROMIUM).exists():
        return None
    return f"{CHROMIUM} is missing; install Debian's `chromium` package (.ci/run does)"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: look only when a test needs it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _chromium_problem
    if not HAVE_PLAYWRIGHT:
        _chromium_problem = "playwright is not installed (pip install -e '.[test]')"
        return
    if any(HERE in item.path.parents for item in items):
        _chromium_problem = _chromium_missing()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "simulator(**config): SimulatorConfig for the test's stack (browser tests)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


def watch_errors(page: Page, errors: list[str]) -> None:
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))


@pytest.fixture(scope="session")
def screenshots(pytestconfig: pytest.Config) -> Path:
    path = pytestconfig.rootpath / "test-output" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if _chromium_problem is not None:
        pytest.skip(f"browser tests need Chromium: {_chromium_problem}")
    async with async_playwright() as playwright:
        # launch() gives every browser a fresh temporary profile (user data dir) of its own.
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def stack(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    marker = request.node.get_closest_marker("simulator")
    config = SimulatorConfig(**{"job_seconds": 1.0, **(marker.kwargs if marker else {})})
    async with running_stack(settings, config) as running:
        yield running


@pytest.fixture
async def context(browser: Browser, stack: Stack) -> AsyncIterator[BrowserContext]:
    # Depends on `stack` so that it closes first: no open event stream outlives the server.
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def page(
    context: BrowserContext, request: pytest.FixtureRequest, screenshots: Path
) -> AsyncIterator[Page]:
    """A tab whose uncaught script errors fail the test; a screenshot is kept if it fails."""
    errors: list[str] = []
    context.on("page", lambda tab: watch_errors(tab, errors))
    tab = await context.new_page()
    yield tab
    if request.node.stash.get(_FAILED, False):
        for n, open_tab in enumerate(p for p in context.pages if not p.is_closed()):
            shot = screenshots / f"FAILED-{request.node.name}-{n}.png"
            await open_tab.screenshot(path=shot, full_page=True)
    assert not errors, f"uncaught errors in the page: {errors}"
