"""A free local port for a process a test starts (the OS picks it; the probe socket is closed
before the process binds it)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
