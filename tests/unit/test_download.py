"""Fetching vendor outputs safely: schemes, address checks, content types, statuses, size caps,
time and rate limits.

The HTTP side is an ``httpx.MockTransport`` behind the same public-only client production uses
(``common.net.public_only_client``), so address checks run for real: IP literals need no DNS,
and hostnames go through a fake resolver handed to the client, so no test touches the network.
The mock sees the request the guard let through: its URL names the address that was checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from common.net import public_only_client
from storage.download import ALLOWED_TYPES, DownloadError, Pace, download

PUBLIC_IP = "93.184.216.34"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 50


class Server:
    """A MockTransport handler that answers every request with `make()` and records it."""

    def __init__(self, status: int = 200, **response: Any) -> None:
        self.status = status
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, **self.response)


class FakeResolver:
    """DNS answered from a table; a name missing from it does not resolve."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
async def make_client(resolver: FakeResolver) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(handler: Any, *, allow_private: bool = False) -> httpx.AsyncClient:
        client = public_only_client(
            allow_private=allow_private,
            timeout=httpx.Timeout(5.0),
            inner=httpx.MockTransport(handler),
            resolve=resolver,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def png_server(body: bytes = PNG, content_type: str = "image/png") -> Server:
    return Server(200, headers={"content-type": content_type}, content=body)


# --- schemes and addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://93.184.216.34/a.png",
        "gopher://93.184.216.34:70/_x",
        "javascript:alert(1)",
        "/relative/a.png",
        "http:///a.png",
        "https://",
        "",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_refuses_other_schemes_and_missing_hosts(
    make_client: Any, url: str, allow_private: bool
) -> None:
    server = png_server()
    with pytest.raises(DownloadError):
        await download(make_client(server, allow_private=allow_private), url, max_bytes=10_000)
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://10.0.0.1/a.png",
        "https://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/a.png",
        "http://0.0.0.0/a.png",
        "http://100.64.0.1/a.png",
        "http://[fd00::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        # IPv4 inside IPv6: `is_global` says True for these (issue 14.8b)
        "http://[::127.0.0.1]:8080/a.png",
        "http://[64:ff9b::7f00:1]:8080/a.png",
        "http://[::ffff:0:7f00:1]:8080/a.png",
        "http://[64:ff9b:1::a00:1]/a.png",
        "http://[2002:7f00:1::]/a.png",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.png",
    ],
)
async def test_refuses_private_addresses(
    make_client: Any, resolver: FakeResolver, url: str
) -> None:
    server = png_server()
    with pytest.raises(DownloadError, match="non-public"):
        await download(make_client(server), url, max_bytes=10_000)
    assert server.requests == []
    assert resolver.calls == []  # a literal is judged as it is


async def test_refuses_a_hostname_that_resolves_to_a_private_address(
    make_client: Any, resolver: FakeResolver
) -> None:
    resolver.table["cdn.vendor.test"] = ["10.1.2.3"]
    server = png_server()
    with pytest.raises(DownloadError, match=r"10\.1\.2\.3"):
        await download(make_client(server), "https://cdn.vendor.test/out.png", max_bytes=10_000)
    assert resolver.calls == [("cdn.vendor.test", 443)]
    assert server.requests == []


async def test_refuses_when_any_resolved_address_is_private(
    make_client: Any, resolver: FakeResolver
) -> None:
    resolver.table["mixed.vendor.test"] = [PUBLIC_IP, "192.168.0.7"]
    server = png_server()
    with pytest.raises(DownloadError, match="non-public"):
        await download(make_client(server), "http://mixed.vendor.test:8080/x.png", max_bytes=10_000)
    assert resolver.calls == [("mixed.vendor.test", 8080)]
    assert server.requests == []


async def test_a_name_that_does_not_resolve_is_a_download_error(make_client: Any) -> None:
    server = png_server()
    with pytest.raises(DownloadError, match="cannot resolve"):
        await download(make_client(server), "https://nowhere.test/a.png", max_bytes=10_000)
    assert server.requests == []


async def test_accepts_a_hostname_that_resolves_to_a_public_address(
    make_client: Any, resolver: FakeResolver
) -> None:
    resolver.table["replicate.delivery"] = [PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946"]
    server = png_server()
    url = "https://replicate.delivery/pbxt/out-0.png"
    fetched = await download(make_client(server), url, max_bytes=10_000)
    assert fetched.file.read() == PNG
    # sent to the address that was checked, under the name (Host header and TLS name)
    (sent,) = server.requests
    assert str(sent.url) == f"https://{PUBLIC_IP}/pbxt/out-0.png"
    assert sent.headers["host"] == "replicate.delivery"
    assert sent.extensions["sni_hostname"] == "replicate.delivery"


async def test_the_name_is_resolved_once_and_the_checked_address_is_used(
    make_client: Any, resolver: FakeResolver
) -> None:
    """DNS rebinding (issue 14.8a): a second lookup would answer 127.0.0.1; there is none."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        resolver.calls.append((host, port))
        return next(answers)

    server = png_server()
    client = public_only_client(
        allow_private=False,
        timeout=httpx.Timeout(5.0),
        inner=httpx.MockTransport(server),
        resolve=rebinding,
    )
    async with client:
        await download(client, "http://rebind.test:8080/a.png", max_bytes=10_000)
    assert resolver.calls == [("rebind.test", 8080)]
    assert [r.url.host for r in server.requests] == [PUBLIC_IP]


async def test_accepts_a_public_ip_literal(make_client: Any) -> None:
    server = png_server()
    url = f"http://{PUBLIC_IP}/out.png"
    fetched = await download(make_client(server), url, max_bytes=10_000)
    assert fetched.size == len(PNG)
    assert [str(r.url) for r in server.requests] == [url]


async def test_allow_private_accepts_loopback_without_resolving(make_client: Any) -> None:
    server = png_server()
    fetched = await download(
        make_client(server, allow_private=True), "http://127.0.0.1:9/a.png", max_bytes=10_000
    )
    assert fetched.file.read() == PNG
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "url",
    [f"http://{PUBLIC_IP}:99999/a.png", f"http://{PUBLIC_IP}:port/a.png", "http://[::1/a.png"],
)
async def test_a_malformed_url_is_a_download_error(make_client: Any, url: str) -> None:
    with pytest.raises(DownloadError):
        await download(make_client(png_server()), url, max_bytes=10_000)


# --- redirects ------------------------------------------------------------------------------


async def test_a_redirect_to_a_private_address_is_refused(
    make_client: Any, resolver: FakeResolver
) -> None:
    resolver.table["inside.test"] = ["10.0.0.5"]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://inside.test/admin.png"})

    with pytest.raises(DownloadError, match="non-public"):
        await download(make_client(handler), f"http://{PUBLIC_IP}/a.png", max_bytes=10_000)
    assert seen == [f"http://{PUBLIC_IP}/a.png"]


async def test_a_redirect_to_a_public_address_is_followed_and_checked(
    make_client: Any, resolver: FakeResolver
) -> None:
    resolver.table["cdn.test"] = ["93.184.216.35"]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC_IP:
            return httpx.Response(302, headers={"location": "https://cdn.test/a.png"})
        return httpx.Response(200, headers={"content-type": "image/png"}, content=PNG)

    fetched = await download(make_client(handler), f"http://{PUBLIC_IP}/a.png", max_bytes=10_000)
    assert fetched.file.read() == PNG
    assert resolver.calls == [("cdn.test", 443)]


# --- content types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/html"},
        {"content-type": "application/octet-stream"},
        {"content-type": "image/svg+xml"},
        {"content-type": "image/pngx"},
        {},
    ],
    ids=["html", "octet-stream", "svg", "near-miss", "missing"],
)
async def test_refuses_content_types_outside_the_allow_list(
    make_client: Any, headers: dict[str, str]
) -> None:
    server = Server(200, headers=headers, content=PNG)
    with pytest.raises(DownloadError, match="content type"):
        await download(make_client(server), f"http://{PUBLIC_IP}/a", max_bytes=10_000)


@pytest.mark.parametrize(
    ("content_type", "body", "expected_type", "extension"),
    [
        ("image/png", PNG, "image/png", "png"),
        ("image/png; charset=binary", PNG, "image/png", "png"),
        ("IMAGE/PNG ; foo=bar", PNG, "image/png", "png"),
        ("image/jpeg", JPEG, "image/jpeg", "jpg"),
        ("image/webp", b"RIFF....WEBP", "image/webp", "webp"),
        ("video/mp4", b"....ftypmp42", "video/mp4", "mp4"),
    ],
)
async def test_accepts_allowed_types_with_their_extension(
    make_client: Any, content_type: str, body: bytes, expected_type: str, extension: str
) -> None:
    server = png_server(body, content_type)
    fetched = await download(make_client(server), f"https://{PUBLIC_IP}/out", max_bytes=10_000)
    assert fetched.content_type == expected_type
    assert fetched.extension == extension
    assert fetched.file.read() == body


def test_allow_list_is_images_and_mp4_only() -> None:
    assert ALLOWED_TYPES == {
        "image/png": "png",
        "image/jpeg": "jpg",
        "image/webp": "webp",
        "image/gif": "gif",
        "video/mp4": "mp4",
    }


# --- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 204, 206, 304, 403, 404, 500])
async def test_refuses_statuses_other_than_200(make_client: Any, status: int) -> None:
    server = Server(
        status,
        headers={"content-type": "image/png", "location": f"http://{PUBLIC_IP}/elsewhere.png"},
        content=PNG,
    )
    with pytest.raises(DownloadError, match=str(status)):
        await download(
            make_client(server),
            f"http://{PUBLIC_IP}/a.png",
            max_bytes=10_000,
        )
    assert len(server.requests) == 1


async def test_transport_errors_are_download_errors(make_client: Any) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(DownloadError, match="download failed"):
        await download(
            make_client(handler),
            f"http://{PUBLIC_IP}/a.png",
            max_bytes=10_000,
        )


# --- size cap -------------------------------------------------------------------------------


async def test_refuses_a_declared_length_over_the_cap(make_client: Any) -> None:
    body = b"x" * 10  # the real body is small: only the declared length can refuse it
    server = Server(
        200, headers={"content-type": "image/png", "content-length": "1000"}, content=body
    )
    with pytest.raises(DownloadError, match="1000 bytes"):
        await download(
            make_client(server),
            f"http://{PUBLIC_IP}/a.png",
            max_bytes=100,
        )


class Chunks:
    """An async body without Content-Length that counts how much of it was read."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk = chunk
        self.count = count
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.sent += 1
            yield self.chunk


async def test_refuses_a_streamed_body_over_the_cap_and_stops_reading(make_client: Any) -> None:
    body = Chunks(b"\x00" * 1024, count=1000)

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body)

    with pytest.raises(DownloadError, match="cap"):
        await download(
            make_client(handler),
            f"http://{PUBLIC_IP}/a.png",
            max_bytes=4096,
        )
    assert body.sent <= 6  # it stopped soon after the cap, not at the end of the stream


async def test_a_streamed_body_at_exactly_the_cap_is_accepted(make_client: Any) -> None:
    body = Chunks(b"ab" * 512, count=4)

    def handler(request: httpx.Request) -> httpx.Response:
        response = httpx.Response(200, headers={"content-type": "image/gif"}, content=body)
        assert "content-length" not in response.headers
        return response

    fetched = await download(make_client(handler), f"http://{PUBLIC_IP}/a.gif", max_bytes=4096)
    assert fetched.size == 4096
    assert fetched.file.read() == b"ab" * 2048
    assert fetched.extension == "gif"


async def test_one_byte_over_the_cap_is_refused(make_client: Any) -> None:
    server = png_server(b"y" * 101)
    with pytest.raises(DownloadError):
        await download(
            make_client(server),
            f"http://{PUBLIC_IP}/a.png",
            max_bytes=100,
        )


# --- the result -----------------------------------------------------------------------------


async def test_returns_size_sha256_and_the_bytes_from_the_start(make_client: Any) -> None:
    server = png_server(JPEG, "image/jpeg")
    fetched = await download(
        make_client(server),
        f"https://{PUBLIC_IP}/out.jpg",
        max_bytes=len(JPEG),
    )
    assert fetched.size == len(JPEG)
    assert fetched.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert fetched.file.tell() == 0
    assert fetched.file.read() == JPEG
    fetched.file.close()


async def test_streamed_result_hash_covers_every_chunk(make_client: Any) -> None:
    body = Chunks(b"chunk-", count=50)

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body)

    fetched = await download(make_client(handler), f"http://{PUBLIC_IP}/a.png", max_bytes=10_000)
    expected = b"chunk-" * 50
    assert (fetched.size, fetched.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert fetched.file.read() == expected


# --- time and rate --------------------------------------------------------------------------


class Trickle:
    """A body that sends one byte, then waits on an event that never comes (the issue's server:
    `Content-Length: 1000000` and a byte every 20 seconds)."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"\x89"
        self.stalled.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover


async def test_a_stalled_body_is_cut_off_by_the_minimum_rate(make_client: Any) -> None:
    body = Trickle()

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body)

    pace = Pace(seconds=60, min_rate=1000, grace=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DownloadError, match="too slow"):
        await download(
            make_client(handler), f"http://{PUBLIC_IP}/a.png", max_bytes=10**6, pace=pace
        )
    assert body.stalled.is_set()
    assert loop.time() - started < 30  # the rate floor, not the wall clock, ended it


async def test_a_download_past_its_wall_clock_is_cut_off(make_client: Any) -> None:
    class Steady:
        """Fast enough for any rate floor, but never ending."""

        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 1024
                await asyncio.sleep(0.01)

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=Steady())

    pace = Pace(seconds=0.3, min_rate=1, grace=0)
    with pytest.raises(DownloadError, match=r"took over 0\.3 s"):
        await download(
            make_client(handler), f"http://{PUBLIC_IP}/a.png", max_bytes=10**9, pace=pace
        )


# --- inline outputs (issue 16.6): Replicate answers a `Prefer: wait` create with data: URIs --


def data_uri(body: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(body).decode()}"


async def test_a_data_uri_is_stored_without_any_request(make_client: Any) -> None:
    client = make_client(lambda request: pytest.fail(f"no request expected: {request.url}"))
    body = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    fetched = await download(client, data_uri(body), max_bytes=1024)
    assert (fetched.content_type, fetched.extension, fetched.size) == ("image/png", "png", 108)
    assert fetched.sha256 == hashlib.sha256(body).hexdigest()
    assert fetched.file.read() == body


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("data:text/html;base64,PGgxPg==", "content type"),
        ("data:image/png,rawbytes", "not base64"),
        ("data:image/png;base64,@@@@", "malformed"),
        ("data:image/png;base64", "no comma"),
    ],
)
async def test_a_bad_data_uri_is_a_download_error(make_client: Any, uri: str, reason: str) -> None:
    client = make_client(lambda request: pytest.fail("no request expected"))
    with pytest.raises(DownloadError, match=reason):
        await download(client, uri, max_bytes=1024)


async def test_a_data_uri_over_the_cap_is_refused_before_decoding(make_client: Any) -> None:
    client = make_client(lambda request: pytest.fail("no request expected"))
    with pytest.raises(DownloadError, match="cap"):
        await download(client, data_uri(b"x" * 2000), max_bytes=1024)
