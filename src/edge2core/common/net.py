"""Small networking helpers: free ports for tests/dev servers and port readiness waits."""

from __future__ import annotations

import socket
import time

__all__ = ["free_port", "wait_for_port", "port_open"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now on ``host``.

    The kernel picks the port (bind to 0). There is an unavoidable race between
    closing this socket and the real server binding it; callers that start
    servers should retry on "address in use" if that ever matters.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=min(0.5, max(timeout, 0.05))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"port {host}:{port} did not accept connections within {timeout:.1f}s")
        time.sleep(0.05)
