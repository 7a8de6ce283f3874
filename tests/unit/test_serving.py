"""The in-loop server's socket must be bound as TCP: asyncio disables Nagle on accepted
connections only when the listening socket's proto is IPPROTO_TCP (proto 0 made every response
on a reused connection wait ~40 ms for a delayed ACK, seen in bench/reconcile_rate.py)."""

from __future__ import annotations

import socket

from taskhook.serving import bind


def test_bound_socket_says_tcp() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
