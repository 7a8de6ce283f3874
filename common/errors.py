"""Every error a client or vendor can see, with its HTTP status and stable code.

TaskhookError             500 internal_error      (the base: whatever is not one of these)
  RequestInvalid          400 invalid_json
  ClientDisconnected      400 client_disconnected (the body never ended; nobody reads this)
  PayloadInvalid          400 invalid_payload     (a signed webhook we cannot read)
  TimestampOutOfRange     400 stale_timestamp
  Unauthorized            401 unauthorized
  SignatureInvalid        401 invalid_signature
  TokenInvalid            401 invalid_token
  WrongAccount            401 wrong_account       (signed by the vendor for another customer)
  InsufficientCredits     402 insufficient_credits
  NotFound                404 not_found
  IdempotencyConflict     409 idempotency_conflict
  NothingToRetry          409 not_retryable       (an operator's retry: nothing waits)
  KeyLimit                409 key_limit           (a user's unrevoked API keys are capped)
  AlreadyTerminal         409 already_terminal
  AlreadyFinished         409 already_finished    (the vendor succeeded: no cancel)
  ParentNotSucceeded      409 parent_not_succeeded (an action on a task that failed)
  ParentNotReady          409 parent_not_ready    (an action on a task its vendor has not finished)
  PayloadTooLarge         413 payload_too_large
  UnsupportedMediaType    415 unsupported_media_type
  ValidationFailed        422 validation_error    (with details)
  RateLimited             429 rate_limited        (with Retry-After)
  ActiveTaskLimit         429 active_task_limit
  Unavailable             503 unavailable
    VerificationUnavailable 503 verification_unavailable (a vendor's keys not fetched yet)
VendorError                                       (raised by adapters, never shown to clients)
  VendorUnavailable       transient: retry later
  VendorRejected          permanent: fail and refund
    VendorParentNotReady  the vendor does not see an action's parent finished: confirm, retry

The docstring of each class is its default message; one handler renders them all as
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

# Why a task failed, as its owner sees it (the task object's `error`, API.md): a stable code
# and a plain sentence, nothing else. What really happened (addresses, exception reprs, the
# vendor's own words) is kept for operators in the task's stored error and events, its
# last_error and the logs (`taskhook tasks show`, /admin): shown to clients it would be a DNS
# and network oracle, and unreadable to an end user.
TASK_ERRORS: Mapping[str, str] = {
    "vendor_failed": "The provider could not complete this job.",
    "vendor_rejected": "The provider refused this job; check the model and its input.",
    "vendor_unavailable": "The provider could not be reached, so the job never started.",
    "vendor_lost": "The provider lost this job.",
    "result_expired": "The provider deleted the result before it could be saved.",
    "deadline_exceeded": "The job did not finish before its deadline.",
    "storage_failed": "The job finished, but its result could not be saved.",
    "output_limit_exceeded": "The job produced more files or bytes than one task may keep.",
}
# For a code without its own sentence (a newer writer, an old row).
TASK_ERROR_DEFAULT = "The task failed."


def task_error_for_client(error: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A stored task error as its owner may see it: the code and the code's sentence."""
    if not error:
        return None
    code = error.get("code")
    code = code if isinstance(code, str) and code else "failed"
    return {"code": code, "message": TASK_ERRORS.get(code, TASK_ERROR_DEFAULT)}


class TaskhookError(Exception):
    """Something went wrong."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {}


class RequestInvalid(TaskhookError):
    """The request body is not valid JSON."""

    status_code = 400
    code = "invalid_json"


class ClientDisconnected(TaskhookError):
    """The client closed the connection before sending the whole body; nothing was done."""

    status_code = 400
    code = "client_disconnected"


class PayloadInvalid(TaskhookError):
    """The webhook payload is signed but cannot be understood; it was kept as a dead letter."""

    status_code = 400
    code = "invalid_payload"


class TimestampOutOfRange(TaskhookError):
    """The webhook timestamp is missing, not an integer, or more than the tolerance away."""

    status_code = 400
    code = "stale_timestamp"


class Unauthorized(TaskhookError):
    """A valid API key is required: send `Authorization: Bearer <key>`."""

    status_code = 401
    code = "unauthorized"


class SignatureInvalid(TaskhookError):
    """The webhook signature is missing or does not match."""

    status_code = 401
    code = "invalid_signature"


class WrongAccount(TaskhookError):
    """The webhook is signed, but for another account at this vendor than ours."""

    status_code = 401
    code = "wrong_account"


class TokenInvalid(TaskhookError):
    """The callback token is not one we issued."""

    status_code = 401
    code = "invalid_token"


class InsufficientCredits(TaskhookError):
    """Not enough credits for this task."""

    status_code = 402
    code = "insufficient_credits"

    def __init__(self, *, price: int, balance: int) -> None:
        # What a user needs to act: the price, what they have, and where credits come from
        # (an operator grants them: `taskhook credits grant` / `credits adjust`).
        super().__init__(
            f"This task costs {price} {_credits(price)} and your balance is {balance} "
            f"{_credits(balance)}. Ask the operator of this service to add credits to your "
            "account, then submit again."
        )
        self.price = price
        self.balance = balance

    def body(self) -> dict[str, Any]:
        answer = super().body()
        answer["error"].update(price=self.price, balance=self.balance)
        return answer


def _credits(n: int) -> str:
    return "credit" if n == 1 else "credits"


class NotFound(TaskhookError):
    """No such resource."""

    status_code = 404
    code = "not_found"


class IdempotencyConflict(TaskhookError):
    """This Idempotency-Key was already used with a different request body."""

    status_code = 409
    code = "idempotency_conflict"


class NothingToRetry(TaskhookError):
    """Nothing of this task waits to be retried now."""

    status_code = 409
    code = "not_retryable"


class KeyLimit(TaskhookError):
    """Too many API keys; revoke one you no longer use first."""

    status_code = 409
    code = "key_limit"


class AlreadyTerminal(TaskhookError):
    """The task has already finished."""

    status_code = 409
    code = "already_terminal"


class AlreadyFinished(TaskhookError):
    """The vendor has already finished this task, so it can no longer be canceled."""

    status_code = 409
    code = "already_finished"


class ParentNotSucceeded(TaskhookError):
    """The task this action acts on did not succeed, so there is nothing to act on."""

    status_code = 409
    code = "parent_not_succeeded"


class ParentNotReady(TaskhookError):
    """The task this action acts on has not finished at its vendor yet; try again shortly."""

    status_code = 409
    code = "parent_not_ready"


class PayloadTooLarge(TaskhookError):
    """The request body is larger than 1 MiB."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(TaskhookError):
    """Send the body as `Content-Type: application/json`."""

    status_code = 415
    code = "unsupported_media_type"


class ValidationFailed(TaskhookError):
    """Some of the request's values are not valid; `details` lists every problem."""

    status_code = 422
    code = "validation_error"


class RateLimited(TaskhookError):
    """Too many requests; retry after the number of seconds in Retry-After."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ActiveTaskLimit(TaskhookError):
    """Too many unfinished tasks; submit more when some have finished."""

    status_code = 429
    code = "active_task_limit"


class Unavailable(TaskhookError):
    """The service is temporarily unavailable; nothing was changed. Retry shortly."""

    status_code = 503
    code = "unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}  # every 503 says when to come back, not only DB errors


class VerificationUnavailable(Unavailable):
    """This vendor's webhooks cannot be verified yet (its signing keys are not fetched); the
    delivery was not looked at. Deliver it again shortly."""

    code = "verification_unavailable"


class VendorError(Exception):
    """A vendor call did not succeed."""


class VendorUnavailable(VendorError):
    """Transient: timeout, transport error, 5xx or 429. Retry later."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
        not_accepted: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = throttled  # a 429: the vendor is up but wants us to slow down
        # True only when the vendor certainly did not take the job (no connection, 429, 503):
        # then a create may fail over to another vendor without risking a second job.
        self.not_accepted = not_accepted or throttled


class VendorRejected(VendorError):
    """Permanent: the vendor refused the job (validation, auth). Do not retry."""


class VendorParentNotReady(VendorRejected):
    """A follow-up action was refused because the vendor does not see its parent job finished
    yet (midjourney-proxy's `task_status_not_success`). Not permanent: confirm and retry."""
