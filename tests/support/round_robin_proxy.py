"""A round-robin TCP load balancer for tests: each new connection on 127.0.0.1:<port> goes to
the next of several real servers, skipping one that refuses the connection (a dead process),
as an HTTP load balancer's health checks would. Bytes pass through untouched, so TLS ends at
the servers (their certificate names 127.0.0.1, as the proxy's address does)."""

from __future__ import annotations

import itertools
import socket
import threading

from tests.support.tcp_proxy import TcpProxy


class RoundRobinProxy(TcpProxy):
    def __init__(self, targets: list[tuple[str, int]]) -> None:
        super().__init__(targets[0])
        self.targets = targets
        self._next = itertools.cycle(range(len(targets)))
        self._pick = threading.Lock()
        self.connections = [0] * len(targets)  # connections handed to each target

    def _connect(self) -> socket.socket | None:
        for _ in self.targets:
            with self._pick:
                index = next(self._next)
            try:
                upstream = socket.create_connection(self.targets[index], timeout=10)
            except OSError:
                continue  # a dead target: the next one
            with self._pick:
                self.connections[index] += 1
            return upstream
        return None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return  # closed
            upstream = self._connect()
            if upstream is None:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
