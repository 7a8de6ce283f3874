"""Fetching a vendor's output safely: http(s) only, public addresses only, a size cap, images only.

A vendor's output URL is data from outside; without these checks a callback could make us fetch
internal services (SSRF) or fill the disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import socket
import tempfile
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

import httpx

ALLOWED_TYPES: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
}


class DownloadError(Exception):
    """The output could not be fetched, or was refused; the message says why. `gone`: the
    server says the file is not there (404, 410): a vendor that deletes results on a
    schedule has deleted it."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True)
class Downloaded:
    file: IO[bytes]
    content_type: str
    extension: str
    size: int
    sha256: str


async def check_public(url: str, *, allow_private: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DownloadError(f"malformed output URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"refusing output URL with scheme {parts.scheme!r}")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError as exc:
        raise DownloadError(f"cannot resolve {parts.hostname}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise DownloadError(f"refusing output URL that resolves to non-public {address}")


def from_data_uri(uri: str, *, max_bytes: int) -> Downloaded:
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
        raise DownloadError(f"output is over the {max_bytes} byte cap")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise DownloadError(f"malformed data: URI: {exc}") from exc
    if len(data) > max_bytes:
        raise DownloadError(f"output is over the {max_bytes} byte cap")
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
    client: httpx.AsyncClient, url: str, *, max_bytes: int, allow_private: bool
) -> Downloaded:
    """Stream into a spooled temp file (memory for small files, disk for big ones)."""
    if url.startswith("data:"):
        return from_data_uri(url, max_bytes=max_bytes)
    await check_public(url, allow_private=allow_private)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    digest = hashlib.sha256()
    size = 0
    try:
        async with client.stream("GET", url, follow_redirects=False, timeout=60) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"output URL answered HTTP {response.status_code}",
                    gone=response.status_code in (404, 410),
                )
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in ALLOWED_TYPES:
                raise DownloadError(f"refusing content type {content_type or 'none'!r}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError(f"output is {declared} bytes, over the {max_bytes} cap")
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"output is over the {max_bytes} byte cap")
                digest.update(chunk)
                spool.write(chunk)
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
