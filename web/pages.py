"""The two HTML pages and their static files: plain HTML, CSS and a little JS, no build step.

The pages hold no secrets and do no server-side rendering of user data: the client page talks
to the public client API with the user's key, the dashboard to /admin/api with the admin key.
Every response carries a strict Content-Security-Policy (scripts and styles only from here), so
even a slip in escaping could not run injected script.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS_PATH = "/assets"

# Result images come from presigned URLs on the S3 endpoint, wherever that is.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: http: https:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page's own URL carries no secret, but keep even that to ourselves.
    "Referrer-Policy": "no-referrer",
    # Pages and scripts change with each release; revalidate rather than run a stale script.
    "Cache-Control": "no-cache",
}


def _page(name: str) -> str:
    return resources.files("web").joinpath("static", name).read_text(encoding="utf-8")


async def client_page(_request: Request) -> HTMLResponse:
    return HTMLResponse(_page("index.html"), headers=SECURITY_HEADERS)


async def admin_page(_request: Request) -> HTMLResponse:
    return HTMLResponse(_page("admin.html"), headers=SECURITY_HEADERS)


class Assets(StaticFiles):
    """The pages' scripts and styles, with the same headers as the pages themselves."""

    def __init__(self) -> None:
        super().__init__(packages=[("web", "static")])

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response
