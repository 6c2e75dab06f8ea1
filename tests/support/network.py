"""Local ports for tests."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A local TCP port that nothing listens on right now (one the system just handed out)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
