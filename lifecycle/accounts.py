"""Webhooks from our own vendor account only (issue 14.9).

fal signs every customer's webhooks with one JWKS, so a valid signature proves only "some fal
customer"; the signed `X-Fal-Webhook-User-Id` says which. Another customer who learns one of
our callback URLs could otherwise deliver authentic-looking results for our task. The account
is `FAL_USER_ID` when configured; otherwise it is learned and pinned in the database
(`vendor_accounts`, first writer wins) from the first webhook that names the job we registered
for its task: a stranger holding only a callback URL cannot name that job (their own job with
our URL carries their request id). Until it is known, a webhook that cannot teach it is
answered 503 (the vendor retries; the reconciler polls meanwhile).
"""

from __future__ import annotations

import hmac
import uuid

import structlog

from common.errors import Unavailable, WrongAccount
from db import queries
from lifecycle.runtime import Runtime
from vendors.registry import configured_account
from vendors.signature import Delivery

log = structlog.get_logger()


async def our_account(rt: Runtime, vendor: str, delivery: Delivery, task_id: uuid.UUID) -> str:
    """The account this vendor's webhooks must come from, learning it when it can."""
    known = configured_account(rt.settings, vendor) or rt.accounts.get(vendor)
    if known is not None:
        return known
    async with rt.pool.acquire() as conn:
        pinned = await queries.vendor_account(conn, vendor=vendor)
        if pinned is None:
            job = await queries.task_job(conn, task_id=task_id, vendor=vendor)
            if (
                job is None
                or delivery.job is None
                or not hmac.compare_digest(job.encode(), delivery.job.encode())
            ):
                raise Unavailable(
                    f"Our {vendor} account is not confirmed yet; retry this delivery."
                )
            assert delivery.account is not None
            pinned = await queries.pin_vendor_account(
                conn, vendor=vendor, account_id=delivery.account
            )
            log.info("vendor_account_pinned", vendor=vendor, account=pinned)
    rt.accounts[vendor] = pinned
    return pinned


async def check_account(
    rt: Runtime, *, vendor: str, delivery: Delivery, task_id: uuid.UUID
) -> None:
    """Raise WrongAccount unless a signed delivery comes from our account at its vendor
    (vendors whose signatures name no account pass)."""
    if delivery.account is None:
        return
    ours = await our_account(rt, vendor, delivery, task_id)
    if not hmac.compare_digest(delivery.account.encode(), ours.encode()):
        log.warning("webhook_wrong_account", vendor=vendor, account=delivery.account)
        raise WrongAccount(f"This {vendor} webhook comes from another {vendor} account.")
