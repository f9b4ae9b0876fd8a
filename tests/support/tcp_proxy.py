"""A TCP proxy a test can pull the plug on: forwards 127.0.0.1:<port> to a real server, and
`cut()` drops every connection through it (as a broker restart or a network fault would),
`stall()` stops forwarding without closing anything (a camera that hangs), and
`close()`/`open()` stop and resume listening on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading

from edge2core.common.net import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def open(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Stop forwarding: connections stay open, nothing more goes through."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again (after `stall`); new connections are forwarded at once either way."""
        self._flowing.set()

    def cut(self) -> None:
        """Drop every connection now (the listener stays open)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.cut()
