"""Listening sockets, taken before a model loads: a busy port is reported at once, not after the load.

Light on purpose (no torch, no uvicorn), so that `stepaudio demo --api-base` can check its port too.
"""

from __future__ import annotations

import errno
import socket

LISTEN_BACKLOG = 2048  # uvicorn's default


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: a free one), or an OSError that says what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)  # now the port is ours: a second server fails on its bind
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} is in use; pass --port") from None
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a client on this machine reaches the socket at (0.0.0.0 and :: become loopback)."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
