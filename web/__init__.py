"""Web pages: the client page at `/` and the operator dashboard at `/admin` (API.md "Web pages").

`routes` goes into create_app next to the client API and the webhook receiver.
"""

from __future__ import annotations

from starlette.routing import Mount, Route

from web.admin import overview, replay, replay_webhook
from web.admin_actions import routes as admin_action_routes
from web.pages import ASSETS_PATH, Assets, admin_page, client_page

routes: list[Route | Mount] = [
    Route("/", client_page, methods=["GET"]),
    Route("/admin", admin_page, methods=["GET"]),
    Route("/admin/api/overview", overview, methods=["GET"]),
    Route("/admin/api/deliveries/{delivery_id}/replay", replay, methods=["POST"]),
    Route("/admin/api/webhooks/{event_id}/replay", replay_webhook, methods=["POST"]),
    *admin_action_routes,
    Mount(ASSETS_PATH, app=Assets(), name="assets"),
]

__all__ = ["routes"]
