"""Start the core and edge sites as separate processes (the demo and integration tests)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge2core.common.certs import CertAuthority
from edge2core.common.net import free_port
from edge2core.common.processes import die_with_parent_preexec, read_tail


@dataclass(frozen=True)
class CorePorts:
    http: int = field(default_factory=free_port)
    nats: int = field(default_factory=free_port)
    nats_http: int = field(default_factory=free_port)
    leafnode: int = field(default_factory=free_port)

    def env(self, data_dir: Path) -> dict[str, str]:
        return {
            "E2C_CORE_DATA_DIR": str(data_dir),
            "E2C_CORE_HTTP_PORT": str(self.http),
            "E2C_CORE_NATS_PORT": str(self.nats),
            "E2C_CORE_NATS_HTTP_PORT": str(self.nats_http),
            "E2C_CORE_LEAFNODE_PORT": str(self.leafnode),
            # Plain text unless started with `tls` (start_core): callers that build their own
            # environment from this keep working as before.
            "E2C_CORE_PLAINTEXT": "true",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.http}"


@dataclass(frozen=True)
class EdgePorts:
    http: int = field(default_factory=free_port)
    nats: int = field(default_factory=free_port)
    nats_http: int = field(default_factory=free_port)
    mqtt: int = field(default_factory=free_port)
    mqtt_ws: int = field(default_factory=free_port)

    def env(self, site: str, data_dir: Path, core: CorePorts) -> dict[str, str]:
        return {
            "E2C_EDGE_SITE": site,
            "E2C_EDGE_DATA_DIR": str(data_dir),
            "E2C_EDGE_HTTP_PORT": str(self.http),
            "E2C_EDGE_NATS_PORT": str(self.nats),
            "E2C_EDGE_NATS_HTTP_PORT": str(self.nats_http),
            "E2C_EDGE_MQTT_PORT": str(self.mqtt),
            "E2C_EDGE_MQTT_WS_PORT": str(self.mqtt_ws),
            "E2C_EDGE_CORE_URL": core.url,
            "E2C_EDGE_CORE_LEAF_URL": f"nats-leaf://127.0.0.1:{core.leafnode}",
            "E2C_EDGE_PLAINTEXT": "true",  # unless started with `tls` (start_edge)
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.http}"


def trust(tls: Path) -> ssl.SSLContext:
    """A client context trusting the CA in folder `tls` (for httpx's `verify`)."""
    return ssl.create_default_context(cafile=str(tls / "ca.pem"))


def make_role_tls(folder: Path, sites: list[str]) -> Path:
    """A private CA in `folder` with the core's certificate and each site's (the demo, tests):
    pass it as `tls` to start_core and start_edge. Returns `folder`."""
    ca = CertAuthority(folder)
    if not ca.exists:
        ca.create()
    if not ca.paths("core", "core")[0].is_file():
        ca.issue("core", "core", ["localhost", "127.0.0.1"])
    for site in sites:
        if not ca.paths("site", site)[0].is_file():
            ca.issue("site", site, ["localhost", "127.0.0.1"])
    return folder


class RoleProcess:
    """`python -m edge2core <role> up` with its settings in the environment."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, health_url: str,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.role = role
        self.health_url = health_url
        self.verify = verify  # for https health checks: the private CA's file
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge2core", role, "up", "--log-level", "INFO"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent_preexec(),
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited early:\n{read_tail(self.log_path)}")
            try:
                if httpx.get(self.health_url, timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.role} not healthy in {timeout}s:\n{read_tail(self.log_path)}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: what a power cut or OOM kill looks like to the process."""
        self.proc.kill()
        self.proc.wait(5)
        self._log.close()


def start_core(
    data_dir: Path, ports: CorePorts | None = None, extra_env: dict[str, str] | None = None,
    tls: Path | None = None,
) -> tuple[RoleProcess, CorePorts]:
    """`tls`: a CA folder from `make_role_tls` (HTTPS, mutual TLS on the leaf link); None:
    plain text, as the setting says (the core logs a warning)."""
    ports = ports or CorePorts()
    secure = {"E2C_CORE_PLAINTEXT": "false", "E2C_CORE_TLS_DIR": str(tls)} if tls else {}
    env = {**ports.env(data_dir), **secure, **(extra_env or {})}
    url = ports.https_url if tls else ports.url
    proc = RoleProcess("core", env, data_dir / "core.log", f"{url}/healthz",
                       verify=trust(tls) if tls else True)
    return proc, ports


def start_edge(
    site: str, data_dir: Path, core: CorePorts, ports: EdgePorts | None = None,
    extra_env: dict[str, str] | None = None, tls: Path | None = None,
) -> tuple[RoleProcess, EdgePorts]:
    ports = ports or EdgePorts()
    secure = {"E2C_EDGE_PLAINTEXT": "false", "E2C_EDGE_TLS_DIR": str(tls),
              "E2C_EDGE_CORE_URL": core.https_url} if tls else {}
    env = {**ports.env(site, data_dir, core), **secure, **(extra_env or {})}
    url = ports.https_url if tls else ports.url
    proc = RoleProcess("edge", env, data_dir / "edge.log", f"{url}/healthz",
                       verify=trust(tls) if tls else True)
    return proc, ports
