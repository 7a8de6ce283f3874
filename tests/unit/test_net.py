"""Which addresses count as public (common.net.is_public): IPv4 inside IPv6 is unwrapped
before judging, since `ipaddress.is_global` is True for several such forms (issue 14.8b)."""

from __future__ import annotations

import ipaddress

import pytest

from common.net import embedded_ipv4, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 - an address under test
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:0:7f00:1",  # IPv4-translated
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::7f00:1",  # NAT64 well-known prefix
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::808:808",  # local-use NAT64: never public
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:2800:220:1:248:1893:25c8:1946",
        "64:ff9b::808:808",  # a public host seen through DNS64/NAT64
        "::ffff:8.8.8.8",
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_the_embedded_ipv4_of_each_form() -> None:
    def inner(text: str) -> list[str]:
        return [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(text))]

    assert inner("::ffff:7f00:1") == ["127.0.0.1"]
    assert inner("::ffff:0:7f00:1") == ["127.0.0.1"]
    assert inner("::7f00:1") == ["127.0.0.1"]
    assert inner("64:ff9b::7f00:1") == ["127.0.0.1"]
    assert inner("2002:7f00:1::") == ["127.0.0.1"]
    assert inner("2001:0:4136:e378:8000:63bf:80ff:fffe") == ["65.54.227.120", "127.0.0.1"]
    assert inner("2606:2800:220:1:248:1893:25c8:1946") == []
