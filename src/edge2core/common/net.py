"""Small networking helpers: free ports for tests/dev servers and port readiness waits."""

from __future__ import annotations

import random
import socket
import time

__all__ = ["free_port", "wait_for_port", "port_open"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now on ``host``.

    Ports come from below the kernel's ephemeral range (read from
    ``/proc/sys/net/ipv4/ip_local_port_range``; 32768 where unknown). A port the
    kernel hands out with ``bind(0)`` is in that range, so any outgoing
    connection made between our check and the server's own bind may take it
    (CI saw NATS fail with "address already in use" this way). Below the range
    only explicit binds compete. A port is never handed out twice by one
    process, and the pick is random so concurrent processes rarely collide.
    """
    low, high = _PORT_FLOOR, _ephemeral_low() - 1
    for _ in range(200):
        port = _random.randint(low, high)
        if port in _handed_out:
            continue
        if _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_PORT_FLOOR = 20000
_handed_out: set[int] = set()
_random = random.Random()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return max(int(f.read().split()[0]), _PORT_FLOOR + 1000)
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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
