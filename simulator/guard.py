"""Every simulated vendor's API door, in one place.

Credentials first, then (for calls that can be overloaded) the ``error_rate`` dice, which
answer 503 or 429 without touching any state, then the handler, whose dialect errors become
that vendor's error answers. Only the answers differ from vendor to vendor.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from simulator.lifecycle import Simulator

Handler = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=Exception)


def guard(
    sim: Simulator,
    *,
    authorized: Callable[[Request], bool],
    refused: Callable[[], Response],
    fault: Callable[[int], Response],
    error: type[E],
    render: Callable[[E], Response],
    faults: bool = True,
) -> Callable[[Handler], Handler]:
    """A decorator for one vendor's handlers (``faults=False``: never overloaded)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return refused()
            if faults:
                sim.stats.api_requests += 1
                status = sim.api_fault()
                if status is not None:
                    return fault(status)
            try:
                return await handler(request)
            except error as err:
                return render(err)

        return wrapped

    return wrap
