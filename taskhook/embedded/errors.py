"""The one error the embedded servers raise, so callers can stop with a single clear line."""

from __future__ import annotations


class EmbeddedServiceError(RuntimeError):
    """An embedded PostgreSQL or S3 server could not be started (or found, or reached).

    The message names the server, says what went wrong and, when the server itself failed,
    ends with the tail of its log, so the operator does not have to go looking for it.
    """
