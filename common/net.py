"""Outbound HTTP to addresses that came from outside, reaching public addresses only (SSRF).

A vendor's output URL (and later a client's webhook URL) is data from a stranger. A check
that resolves the name, judges the answer and then lets the HTTP client resolve it again is
beaten by DNS rebinding (the second answer is 127.0.0.1), and `ipaddress.is_global` alone is
beaten by IPv6 forms that carry an IPv4 address inside (`::127.0.0.1`, `64:ff9b::7f00:1`,
`::ffff:0:7f00:1`, 6to4, Teredo). So here:

* the name is resolved once, every address is judged with its embedded IPv4 unwrapped, and
  the request is sent to the judged address itself: the URL's host becomes the IP, while the
  Host header and TLS (SNI and certificate check, httpcore's `sni_hostname`) keep the name;
* the check sits in the transport, so every request the client makes goes through it,
  redirects included;
* connections are not kept alive: a pooled connection is keyed by IP, and one opened (and
  TLS-verified) for one name must not carry a request for another name on the same address.

`public_only_client()` is the one way to build such a client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Prefixes whose IPv6 addresses carry an IPv4 address in their last 32 bits.
_IPV4_TAIL_PREFIXES = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 6145)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, RFC 4291)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
)
# Local-use NAT64 (RFC 8215): the embedded IPv4 sits wherever the operator's prefix length puts
# it, and the prefix is not globally routable by definition: refused outright.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class NonPublicAddress(httpx.ConnectError):
    """The URL's host is, or resolves to, an address that is not public."""


class UnresolvableHost(httpx.ConnectError):
    """The URL's host name does not resolve."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (mapped, translated, compatible, NAT64,
    6to4, both ends of Teredo), which is where a packet to it may end up."""
    found: list[ipaddress.IPv4Address] = []
    if any(address in net for net in _IPV4_TAIL_PREFIXES) and address not in (
        ipaddress.IPv6Address("::"),
        ipaddress.IPv6Address("::1"),
    ):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _public_ipv4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def is_public(address: IPAddress) -> bool:
    """Whether a connection to `address` can only reach the public internet."""
    if isinstance(address, ipaddress.IPv4Address):
        return _public_ipv4(address)
    if address in _NAT64_LOCAL:
        return False
    inner = embedded_ipv4(address)
    if inner and any(address in net for net in _IPV4_TAIL_PREFIXES):
        # Judged by the IPv4 address inside alone: the prefix itself is "reserved" (::/8),
        # yet a DNS64 network gives public hosts exactly such addresses.
        return all(_public_ipv4(v4) for v4 in inner)
    if not address.is_global or (
        address.is_multicast
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_site_local
        or address.is_reserved
    ):
        return False
    return all(_public_ipv4(v4) for v4 in inner)  # 6to4 (Teredo is not global at all)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the name resolves to, in the resolver's order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


Resolver = Callable[[str, int], Awaitable[list[str]]]


class PublicOnlyTransport(httpx.AsyncBaseTransport):
    """Resolve once, judge, then send to the judged address (see the module docstring).

    With `allow_private` (local simulator, tests) requests pass through unchanged.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        allow_private: bool,
        resolve: Resolver | None = None,
    ) -> None:
        self._inner = inner
        self._allow_private = allow_private
        self._resolve = resolve

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._allow_private:
            return await self._inner.handle_async_request(request)
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = await self._addresses(request, host, port)
        last: httpx.TransportError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # Host: the name, set when the request was built
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # nothing was sent: the next checked address may answer
        assert last is not None
        raise last

    async def _addresses(self, request: httpx.Request, host: str, port: int) -> list[IPAddress]:
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            found = [literal]
        else:
            resolve = self._resolve or resolve_host
            try:
                names = await resolve(host, port)
            except OSError as exc:
                raise UnresolvableHost(f"cannot resolve {host}: {exc}", request=request) from exc
            found = [ipaddress.ip_address(name.split("%")[0]) for name in names]
            if not found:
                raise UnresolvableHost(f"cannot resolve {host}: no addresses", request=request)
        refused = [address for address in found if not is_public(address)]
        if refused:
            raise NonPublicAddress(
                f"refusing {host}: it resolves to non-public {refused[0]}", request=request
            )
        return found

    async def aclose(self) -> None:
        await self._inner.aclose()


def public_only_client(
    *,
    allow_private: bool,
    timeout: httpx.Timeout,
    max_connections: int = 100,
    max_redirects: int = 5,
    user_agent: str = "taskhook/0.1",
    inner: httpx.AsyncBaseTransport | None = None,
    resolve: Resolver | None = None,
) -> httpx.AsyncClient:
    """A client for URLs from outside: public addresses only (every redirect hop too), no
    proxies from the environment (a proxy would resolve the name itself), no keep-alive.
    `inner` stands in for the network in tests."""
    transport = PublicOnlyTransport(
        inner
        or httpx.AsyncHTTPTransport(
            trust_env=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
        ),
        allow_private=allow_private,
        resolve=resolve,
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=True,
        max_redirects=max_redirects,
        trust_env=False,
        headers={"User-Agent": user_agent},
    )
