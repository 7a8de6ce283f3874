"""The model catalogue: what this deployment serves, at what price, and where now (issue 17.1).

One list for GET /v1/models, `taskhook models list` and the client page's model picker, built
from the same settings submit routes by (TASKHOOK_ROUTES, TASKHOOK_ALLOW_UNROUTED_MODELS) and
the vendors' state every process shares (circuits, pauses), so the page never offers a model
the deployment does not serve and always posts names that take routes, failover and prices.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from common.settings import Settings
from db import queries
from db.queries import Conn

# Models a client may name at a vendor without routes (or with unrouted models allowed),
# offered at TASKHOOK_TASK_COST: each vendor's staple, with the words the page shows.
PLAIN_MODELS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "replicate": (
        ("black-forest-labs/flux-schnell", "FLUX.1 schnell at Replicate: fast"),
        ("black-forest-labs/flux-dev", "FLUX.1 dev at Replicate: detailed"),
    ),
    "fal": (("fal-ai/flux/schnell", "FLUX.1 schnell at fal: fast"),),
    "midjourney": (("midjourney", "Midjourney: upscale and vary after"),),
}


@dataclass(frozen=True, kw_only=True)
class VendorOffer:
    vendor: str
    price: int
    available: bool  # circuit not open and not paused by an operator: takes new tasks now


@dataclass(frozen=True, kw_only=True)
class Model:
    id: str  # what a client posts as `model`
    price: int  # what a task costs now: the first available route's price
    vendors: tuple[VendorOffer, ...]  # in order of preference
    description: str
    route: bool  # a TASKHOOK_ROUTES name; False: a vendor's own model id, post it with `vendor`

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "price": self.price,
            "vendors": [
                {"vendor": v.vendor, "available": v.available, "price": v.price}
                for v in self.vendors
            ],
            "description": self.description,
            "route": self.route,
        }


async def unavailable_vendors(conn: Conn) -> set[str]:
    """Vendors that take no new tasks now, as every process sees them."""
    return set(await queries.open_circuits(conn))


def build_catalogue(settings: Settings, *, unavailable: Collection[str]) -> list[Model]:
    """Every model this deployment serves: its routes (through vendors configured here), then,
    when clients may name vendor models directly, each configured vendor's staples."""
    configured = settings.vendors
    models: list[Model] = []
    routed_pairs: set[tuple[str, str]] = set()
    for name, routes in settings.routes.items():
        served = [r for r in routes if r.vendor in configured]
        routed_pairs.update((r.vendor, r.model) for r in routes)
        if not served:
            continue
        offers = tuple(
            VendorOffer(vendor=r.vendor, price=r.price, available=r.vendor not in unavailable)
            for r in served
        )
        first = next((o for o in offers if o.available), offers[0])
        description = settings.model_descriptions.get(name) or "Served by " + ", ".join(
            o.vendor for o in offers
        )
        models.append(
            Model(id=name, price=first.price, vendors=offers, description=description, route=True)
        )
    if settings.routes and not settings.allow_unrouted_models:
        return models
    for vendor in configured:
        for model_id, description in PLAIN_MODELS.get(vendor, ()):
            if (vendor, model_id) in routed_pairs:
                continue  # named directly it costs its route's price: offered as the route
            offer = VendorOffer(
                vendor=vendor, price=settings.task_cost, available=vendor not in unavailable
            )
            models.append(
                Model(
                    id=model_id,
                    price=settings.task_cost,
                    vendors=(offer,),
                    description=description,
                    route=False,
                )
            )
    return models


async def catalogue(conn: Conn, settings: Settings) -> list[Model]:
    return build_catalogue(settings, unavailable=await unavailable_vendors(conn))
