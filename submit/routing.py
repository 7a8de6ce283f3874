"""Which vendor serves a submitted task, what it costs, and where it goes if that vendor is down.

A model named in TASKHOOK_ROUTES may be served by several vendors in order of preference, each
with its own model id and credit price. Submit takes the first route whose vendor is configured
here and whose circuit is closed; the routes after it are kept with the task as fallbacks for
registration (see submit.registration), so failover needs no state outside the task row.
A client that names a vendor pins the task to it: no fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from db import queries
from taskhook.runtime import Runtime
from taskhook.settings import VendorRoute


@dataclass(frozen=True)
class Plan:
    vendor: str
    vendor_model: str
    price: int
    fallbacks: list[dict[str, Any]] = field(default_factory=list)


def candidates(rt: Runtime, model: str, vendor: str | None) -> list[VendorRoute]:
    """Routes for this request that this process can serve, in order of preference."""
    routed = [r for r in rt.settings.routes.get(model, ()) if r.vendor in rt.vendors]
    if vendor is not None:
        pinned = [r for r in routed if r.vendor == vendor]
        return pinned or [VendorRoute(vendor, model, rt.settings.task_cost)]
    if routed:
        return routed
    default = rt.settings.vendors[0] if rt.settings.vendors else None
    return [VendorRoute(default, model, rt.settings.task_cost)] if default in rt.vendors else []


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
