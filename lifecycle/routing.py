"""Which vendor serves a submitted task, what it costs, and where it goes if that vendor is down.

A model named in TASKHOOK_ROUTES may be served by several vendors in order of preference, each
with its own model id and credit price. Submit takes the first route whose vendor is configured
here and whose circuit is closed; the routes after it are kept with the task as fallbacks for
registration (see submit.registration), so failover needs no state outside the task row.
A client that names a vendor pins the task to it: no fallbacks.

The price is the operator's, however the client spells the model: a vendor's own model id that
a route lists (or another spelling of it, a pinned version: the adapter's `model_key`) costs
that route's price, at that vendor. With routes configured, a model no route lists is refused
unless TASKHOOK_ALLOW_UNROUTED_MODELS lets it through at TASKHOOK_TASK_COST.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.settings import VendorRoute
from db import queries
from lifecycle.runtime import Runtime


@dataclass(frozen=True)
class Plan:
    vendor: str
    vendor_model: str
    price: int
    fallbacks: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Choice:
    """The routes a request may take, in order of preference; none (and no problem) when no
    vendor configured in this process can serve it."""

    routes: list[VendorRoute]
    problem: tuple[str, str] | None = None  # (field, message): a request that cannot work


def choose(rt: Runtime, model: str, vendor: str | None) -> Choice:
    """Routes for this request that this process can serve. `vendor`, when given, is one of
    rt.vendors (the caller checked)."""
    settings = rt.settings
    if model in settings.routes:
        routed = [r for r in settings.routes[model] if r.vendor in rt.vendors]
        if vendor is None:
            return Choice(routed)
        pinned = [r for r in routed if r.vendor == vendor]
        return (
            Choice(pinned) if pinned else Choice([], ("vendor", f"{vendor} does not serve {model}"))
        )
    listed = _listed(rt, model, vendor)
    if listed is not None:
        return Choice([listed])
    if settings.routes and not settings.allow_unrouted_models:
        offered = ", ".join(sorted(settings.routes)[:20])
        return Choice([], ("model", f"not a model this server offers; it offers: {offered}"))
    target = vendor or (settings.vendors[0] if settings.vendors else None)
    if target is None or target not in rt.vendors:
        return Choice([])
    error = rt.vendors[target].model_error(model)
    if error:
        return Choice([], ("model", error))
    return Choice([VendorRoute(target, model, settings.task_cost)])


def _listed(rt: Runtime, model: str, vendor: str | None) -> VendorRoute | None:
    """A vendor model id some route lists, at that vendor and the route's price (the highest,
    should several routes list it): the client pinned the vendor by naming its id."""
    for name in [vendor] if vendor else [v for v in rt.settings.vendors if v in rt.vendors]:
        adapter = rt.vendors[name]
        key = adapter.model_key(model)
        prices = [
            r.price
            for routes in rt.settings.routes.values()
            for r in routes
            if r.vendor == name and adapter.model_key(r.model) == key
        ]
        if prices:
            return VendorRoute(name, model, max(prices))
    return None


async def plan(rt: Runtime, routes: list[VendorRoute]) -> Plan:
    """First route with a closed circuit (or the first of all when every circuit is open: the
    task then waits in pending like any task whose vendor is down)."""
    chosen = 0
    if len(routes) > 1:
        async with rt.pool.acquire() as conn:
            down = await queries.open_circuits(conn)
        chosen = next((i for i, r in enumerate(routes) if r.vendor not in down), 0)
    first = routes[chosen]
    rest = routes[chosen + 1 :] + routes[:chosen]
    return Plan(
        vendor=first.vendor,
        vendor_model=first.model,
        price=first.price,
        fallbacks=[{"vendor": r.vendor, "model": r.model} for r in rest],
    )
