"""A vendor adapter whose answers a test scripts, for routing and receiver rules that do not
depend on any one vendor's wire format (those are tested against the simulator)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from common.errors import PayloadInvalid
from common.states import TaskStatus
from lifecycle.runtime import Runtime
from lifecycle.vendor_health import Limits, VendorHealth
from vendors.base import VendorUpdate
from vendors.signature import Delivery


@dataclass
class ScriptedVendor:
    name: str
    signed_callbacks: bool = True
    actions: frozenset[str] = frozenset()
    finds_created: bool = False
    result_retention: float | None = None
    # What submit/submit_action/fetch do next: an exception to raise or an update to return.
    on_submit: list[BaseException | VendorUpdate] = field(default_factory=list)
    on_fetch: list[BaseException | VendorUpdate] = field(default_factory=list)
    # What find_created does next: an exception to raise or the jobs to return.
    on_find: list[BaseException | list[VendorUpdate]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # When set, submit waits for it after recording the call (a vendor slow to answer).
    gate: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0

    async def prepare(self) -> None:
        return None

    async def check_credentials(self) -> str:
        return f"{self.name}: scripted, no credentials"

    def model_error(self, model: str) -> str | None:
        return None

    def model_key(self, model: str) -> str:
        return model.lower()

    def _next(self, script: list[BaseException | VendorUpdate], default: VendorUpdate) -> Any:
        step = script.pop(0) if script else default
        if isinstance(step, BaseException):
            raise step
        return step

    async def submit(
        self, *, task_id: uuid.UUID, model: str, input: Mapping[str, Any], callback_url: str
    ) -> VendorUpdate:
        self.calls.append(("submit", {"model": model, "callback_url": callback_url}))
        if self.gate is not None:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self.gate.wait()
            finally:
                self.in_flight -= 1
        job = f"{self.name}-{task_id.hex[:8]}"
        return self._next(self.on_submit, update(job, TaskStatus.SUBMITTED))  # type: ignore[no-any-return]

    async def find_created(
        self, *, model: str, input: Mapping[str, Any], since: datetime
    ) -> list[VendorUpdate]:
        self.calls.append(("find", {"model": model, "input": dict(input), "since": since}))
        step = self.on_find.pop(0) if self.on_find else []
        if isinstance(step, BaseException):
            raise step
        return step

    async def submit_action(
        self,
        *,
        task_id: uuid.UUID,
        parent_vendor_task_id: str,
        action: str,
        index: int,
        callback_url: str,
    ) -> VendorUpdate:
        self.calls.append(
            ("action", {"parent": parent_vendor_task_id, "action": action, "index": index})
        )
        job = f"{self.name}-{task_id.hex[:8]}"
        return self._next(self.on_submit, update(job, TaskStatus.SUBMITTED))  # type: ignore[no-any-return]

    async def fetch(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> VendorUpdate:
        call = {"job": vendor_task_id, "model": model}
        self.calls.append(("fetch", call if urls is None else {**call, "urls": dict(urls)}))
        return self._next(self.on_fetch, update(vendor_task_id, TaskStatus.PROCESSING))  # type: ignore[no-any-return]

    async def cancel(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> None:
        self.calls.append(("cancel", {"job": vendor_task_id}))

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> Delivery:
        return Delivery(delivery_id=headers.get("x-delivery-id", "d1"), timestamp=int(now))

    def parse(self, body: bytes) -> VendorUpdate:
        try:
            doc = json.loads(body)
            return update(doc["id"], TaskStatus(doc["status"]), confirm=bool(doc.get("confirm")))
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadInvalid(f"not a scripted update: {exc}") from exc

    def called(self, kind: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == kind]


def update(job: str, status: TaskStatus, **extra: Any) -> VendorUpdate:
    if status is TaskStatus.STORING and "outputs" not in extra and not extra.get("confirm"):
        extra["outputs"] = ["http://files.invalid/1.png"]
    return VendorUpdate(vendor_task_id=job, status=status, raw_status=status.value, **extra)


@asynccontextmanager
async def app_client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app served on `rt`, built after the test replaced its vendors or settings."""
    from taskhook.app import create_app

    transport = httpx.ASGITransport(app=create_app(rt.settings, runtime=rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# A scripted vendor answers at once and limits nothing: its bucket (which registrations draw
# from too) must not throttle tests about something else. Tests of limits set their own.
UNLIMITED = Limits(rate=10_000.0, burst=10_000.0)


def install(rt: Runtime, *vendors: ScriptedVendor) -> None:
    """Replace the runtime's adapters with these (each with its own shared health row)."""
    rt.vendors.clear()
    rt.health.clear()
    for vendor in vendors:
        rt.vendors[vendor.name] = vendor
        rt.health[vendor.name] = VendorHealth(rt.pool, vendor.name, UNLIMITED)
