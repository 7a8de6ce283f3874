"""What every vendor adapter offers, and the vendor-neutral shape of what a vendor tells us."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import httpx

from common.settings import Settings
from common.states import TaskStatus
from vendors.signature import Delivery


@dataclass(frozen=True, kw_only=True)
class VendorUpdate:
    """One report from a vendor, already mapped to our states."""

    vendor_task_id: str
    status: TaskStatus
    raw_status: str
    progress: int | None = None
    outputs: list[str] | None = None
    error: str | None = None
    # Why a failure is one, in our vocabulary (API.md error codes); None: "vendor_failed".
    error_code: str | None = None
    # Where the vendor says to ask about this job from now on (fal's status_url, response_url
    # and cancel_url); kept with the task and handed back to fetch and cancel.
    urls: Mapping[str, str] | None = None
    # Only a hint: the vendor's API must be asked what happened (a fal webhook whose payload
    # could not be delivered). The receiver confirms it like an unsigned callback.
    confirm: bool = False


RESULT_EXPIRED = "result_expired"
"""The job succeeded, but its result was deleted by the vendor before we stored it."""


class VendorAdapter(Protocol):
    """Everything one vendor knows lives in its module; callers see only this."""

    name: str
    # Signed vendors' callbacks are authoritative; unsigned ones are only a hint to poll.
    signed_callbacks: bool
    # Follow-up actions on a finished job (e.g. {"upscale", "variation"}); empty when none.
    actions: frozenset[str]
    # True when `find_created` can tell whether an earlier create made a job (a list API).
    finds_created: bool
    # Seconds the vendor keeps a finished job's result, at worst; None: as long as we need.
    # Polls of a task whose callbacks were lost are spaced to see it finished well within.
    result_retention: float | None

    async def prepare(self) -> None:
        """Fetch what the adapter needs before it can verify (e.g. webhook secrets, keys)."""

    async def check_credentials(self) -> str:
        """One cheap authenticated call (`taskhook check`): a few words on what answered;
        raises VendorError when the credentials are refused or the vendor cannot say."""

    def model_error(self, model: str) -> str | None:
        """Why this model name can never work with this vendor, or None."""

    def model_key(self, model: str) -> str:
        """What a model id names, for pricing: two ids with one key run the same model here
        (another spelling, a pinned version), so a route's price for one covers the other."""

    async def submit(
        self, *, task_id: uuid.UUID, model: str, input: Mapping[str, Any], callback_url: str
    ) -> VendorUpdate:
        """Register the job; raises VendorUnavailable (retry) or VendorRejected (give up)."""

    async def find_created(
        self, *, model: str, input: Mapping[str, Any], since: datetime
    ) -> list[VendorUpdate]:
        """Jobs an ambiguous create (timeout, 5xx) of this model and input may have made since
        `since`, newest first; empty when there is certainly none. Raises VendorUnavailable
        when the vendor cannot tell now. Only called when `finds_created`."""

    async def submit_action(
        self,
        *,
        task_id: uuid.UUID,
        parent_vendor_task_id: str,
        action: str,
        index: int,
        callback_url: str,
    ) -> VendorUpdate:
        """Register a follow-up job (one of `actions`) on a finished parent job."""

    async def fetch(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> VendorUpdate:
        """The vendor's current view of the job (`model` is the vendor's model id; `urls` what
        the vendor gave at submit, when it gives any)."""

    async def cancel(
        self, vendor_task_id: str, *, model: str, urls: Mapping[str, str] | None = None
    ) -> None:
        """Ask the vendor to stop; best effort."""

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float) -> Delivery:
        """Authenticate a callback over its raw bytes.

        Raises SignatureInvalid or TimestampOutOfRange.
        """

    def parse(self, body: bytes) -> VendorUpdate:
        """Read a verified callback's body; raises PayloadInvalid."""


C = TypeVar("C")


class CheckFailed(Exception):
    """A vendor's own check in `taskhook check` failed; the message is for the operator."""


# `taskhook check`'s vendor-specific checks: (name, the check), each answering a line of
# detail or raising CheckFailed / VendorError.
VendorChecks = Sequence[tuple[str, Callable[[], Awaitable[str]]]]


def _no_account(config: Any) -> str | None:
    return None


def _no_problem(config: Any, settings: Settings) -> str | None:
    return None


def _no_checks(
    config: Any, adapter: VendorAdapter, settings: Settings, client: httpx.AsyncClient
) -> VendorChecks:
    return ()


@dataclass(frozen=True, kw_only=True)
class VendorPlugin(Generic[C]):
    """Everything the rest of taskhook needs to know to use a vendor, exported by its module
    and registered with one line in vendors/registry.py."""

    name: str
    # Its settings: a dataclass whose fields are declared with common.settings.setting.
    settings: type[C]
    # The variable whose presence turns the vendor on.
    enabled_by: str
    # Headers of its webhooks worth keeping with a delivery (replay, forensics), lower case.
    headers: tuple[str, ...] = ()
    # The adapter, on the shared client, from its settings and ours.
    build: Callable[[C, httpx.AsyncClient, Settings], VendorAdapter]
    # The vendor account its signed webhooks must come from, when configured.
    account: Callable[[C], str | None] = _no_account
    # What it cannot work with in these settings, known without calling anyone (production
    # refuses to start with it).
    settings_problem: Callable[[C, Settings], str | None] = _no_problem
    # Its checks in `taskhook check`, besides the credentials every vendor's are checked for.
    checks: Callable[[C, VendorAdapter, Settings, httpx.AsyncClient], VendorChecks] = _no_checks
