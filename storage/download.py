"""Fetching a vendor's output safely: http(s) only, public addresses only, images only, and
bounded in size, in time and from below in rate.

A vendor's output URL is data from outside; without these checks a callback could make us fetch
internal services (SSRF), fill the disk, or hold a worker for ever with a server that sends one
byte every 20 seconds. Which addresses may be reached is the client's business: `download` is
given a client from `common.net.public_only_client`, which resolves each name once and
connects only to the address it judged (redirects included).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import tempfile
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

import httpx

from common.net import NonPublicAddress, UnresolvableHost

ALLOWED_TYPES: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
}


class DownloadError(Exception):
    """The output could not be fetched, or was refused; the message says why (for operators:
    it may name addresses and exceptions, so clients only ever see the task error's code).
    `gone`: the server says the file is not there (404, 410): a vendor that deletes results on
    a schedule has deleted it."""

    code = "storage_failed"
    # A retry cannot help (the output breaks a limit): fail the task at once.
    permanent = False

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


class OutputLimitExceeded(DownloadError):
    """The outputs of one task are more, or larger, than a task may keep."""

    code = "output_limit_exceeded"
    permanent = True


@dataclass(frozen=True, kw_only=True)
class Pace:
    """How long one download may take: at most `seconds` in all, and after the first `grace`
    seconds at least `min_rate` bytes per second on average (0 = no floor)."""

    seconds: float = 60.0
    min_rate: float = 32 * 1024
    grace: float = 10.0


@dataclass(frozen=True)
class Downloaded:
    file: IO[bytes]
    content_type: str
    extension: str
    size: int
    sha256: str


def check_url(url: str) -> None:
    """What can be refused from the text alone: a scheme other than http(s), no host, a bad
    port. (Addresses are judged by the client, at connection time.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        raise DownloadError(f"malformed output URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"refusing output URL with scheme {parts.scheme!r}")


def from_data_uri(
    uri: str, *, max_bytes: int, limit_error: type[DownloadError] = DownloadError
) -> Downloaded:
    """An output that came inline as an RFC 2397 `data:` URI (Replicate answers a `Prefer: wait`
    create with them): the same checks as a download, without any network."""
    header, comma, payload = uri.partition(",")
    if not comma:
        raise DownloadError("malformed data: URI (no comma)")
    params = header.removeprefix("data:").split(";")
    content_type = params[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise DownloadError(f"refusing content type {content_type or 'none'!r}")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise DownloadError("refusing a data: URI that is not base64")
    # Refuse before decoding: 4 characters of base64 carry 3 bytes.
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise limit_error(f"output is over the {max_bytes} byte cap")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise DownloadError(f"malformed data: URI: {exc}") from exc
    if len(data) > max_bytes:
        raise limit_error(f"output is over the {max_bytes} byte cap")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    spool.write(data)
    spool.seek(0)
    return Downloaded(
        file=spool,
        content_type=content_type,
        extension=ALLOWED_TYPES[content_type],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


async def download(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    pace: Pace | None = None,
    limit_error: type[DownloadError] = DownloadError,
) -> Downloaded:
    """Stream into a spooled temp file (memory for small files, disk for big ones).

    `limit_error` is raised when the output is over `max_bytes` (the caller passes
    `OutputLimitExceeded` when the cap is the task's total rather than one file's).
    """
    if url.startswith("data:"):
        return from_data_uri(url, max_bytes=max_bytes, limit_error=limit_error)
    check_url(url)
    pace = pace or Pace()
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    digest = hashlib.sha256()
    size = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    wall = started + pace.seconds

    def next_byte_due() -> float:
        """When the download is too slow unless more bytes have come by then."""
        if pace.min_rate <= 0:
            return wall
        return min(wall, started + pace.grace + (size + 1) / pace.min_rate)

    try:
        async with asyncio.timeout_at(next_byte_due()) as limit:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise DownloadError(
                        f"output URL answered HTTP {response.status_code}",
                        gone=response.status_code in (404, 410),
                    )
                content_type = (
                    response.headers.get("content-type", "").split(";")[0].strip().lower()
                )
                if content_type not in ALLOWED_TYPES:
                    raise DownloadError(f"refusing content type {content_type or 'none'!r}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise limit_error(f"output is {declared} bytes, over the {max_bytes} cap")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise limit_error(f"output is over the {max_bytes} byte cap")
                    digest.update(chunk)
                    spool.write(chunk)
                    limit.reschedule(next_byte_due())
    except TimeoutError:
        spool.close()
        elapsed = loop.time() - started
        if loop.time() >= wall:
            raise DownloadError(
                f"download took over {pace.seconds:g} s ({size} bytes so far)"
            ) from None
        raise DownloadError(
            f"download too slow: {size} bytes in {elapsed:.1f} s, under {pace.min_rate:g} bytes/s"
        ) from None
    except NonPublicAddress as exc:
        spool.close()
        raise DownloadError(f"refusing output URL: {exc}") from exc
    except UnresolvableHost as exc:
        spool.close()
        raise DownloadError(str(exc)) from exc
    except httpx.HTTPError as exc:
        spool.close()
        raise DownloadError(f"download failed: {exc!r}") from exc
    except DownloadError:
        spool.close()
        raise
    spool.seek(0)
    return Downloaded(
        file=spool,
        content_type=content_type,
        extension=ALLOWED_TYPES[content_type],
        size=size,
        sha256=digest.hexdigest(),
    )
