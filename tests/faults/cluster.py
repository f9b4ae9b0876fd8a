"""A core and one edge site as real processes, restartable on the same ports and folders the
way an operator's service manager restarts a unit, plus what the histories are read from.

`Role` is `edge2core.roles.RoleProcess` with an optional command prefix (`ip netns exec NS`),
so the same helper can start the core inside a network namespace for the partition scenarios.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edge2core.common.net import free_port
from edge2core.common.processes import die_with_parent_preexec, read_tail
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.mqtt_door import MqttEndpoint
from edge2core.roles import CorePorts, EdgePorts

SITE = "store-f"
KIOSK_MQTT, KIOSK_HTTP, SHOPPER = "kiosk-m", "kiosk-h", "shopper-1"


class Role:
    """`python -m edge2core <role> up`, its settings in the environment, its log in a file."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, health_url: str,
                 prefix: list[str] | None = None) -> None:
        self.role, self.env, self.log_path, self.health_url = role, env, log_path, health_url
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Role:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "edge2core", self.role, "up",
                 "--log-level", "INFO"],
                env={**os.environ, **self.env}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent_preexec())
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = 90.0) -> float:
        """Seconds until /healthz answered 200; `RuntimeError` if the process died."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.alive():
                raise RuntimeError(f"{self.role} exited:\n{read_tail(self.log_path)}")
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.role} not healthy in {timeout}s:\n{read_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL: a power cut or the OOM killer, as the process sees it."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def children(self, name: str) -> list[int]:
        """Pids of this process's children whose command line contains `name`."""
        found = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
                except OSError:
                    continue
                if name.encode() in cmdline:
                    found.append(int(kid))
        return found


@dataclass
class Cluster:
    """One core and one edge site under `root`; ports fixed for the cluster's life."""

    root: Path
    core_host: str = "127.0.0.1"
    core_prefix: list[str] = field(default_factory=list)
    edge_env: dict[str, str] = field(default_factory=dict)
    core_env: dict[str, str] = field(default_factory=dict)
    edge_data: Path | None = None
    core_ports: CorePorts = field(default_factory=lambda: CorePorts(free_port(), free_port(),
                                                                     free_port(), free_port()))
    edge_ports: EdgePorts = field(default_factory=EdgePorts)
    tokens: dict[str, str] = field(default_factory=dict)
    core: Role = field(init=False)
    edge: Role = field(init=False)

    def __post_init__(self) -> None:
        self.edge_dir = self.edge_data or self.root / "edge"
        self.core_dir = self.root / "core"
        registry = DeviceRegistry(self.edge_dir / "devices.json")
        self.tokens = {KIOSK_MQTT: registry.add(KIOSK_MQTT, DeviceRole.KIOSK),
                       KIOSK_HTTP: registry.add(KIOSK_HTTP, DeviceRole.KIOSK),
                       SHOPPER: registry.add(SHOPPER, DeviceRole.SHOPPER)}
        core_url = f"http://{self.core_host}:{self.core_ports.http}"
        core_env = {**self.core_ports.env(self.core_dir), "E2C_CORE_HOST": self.core_host,
                    **self.core_env}
        edge_env = {**self.edge_ports.env(SITE, self.edge_dir, self.core_ports),
                    "E2C_EDGE_CORE_URL": core_url,
                    "E2C_EDGE_CORE_LEAF_URL": f"nats-leaf://{self.core_host}:{self.core_ports.leafnode}",
                    **self.edge_env}
        self.core_url = core_url
        self.core = Role("core", core_env, self.core_dir / "core.log", f"{core_url}/healthz",
                         self.core_prefix)
        self.edge = Role("edge", edge_env, self.root / "edge.log", f"{self.edge_ports.url}/healthz")

    def start(self) -> Cluster:
        self.core.start()
        self.edge.start()
        self.core.wait_healthy()
        self.edge.wait_healthy()
        return self

    def close(self) -> None:
        self.edge.stop()
        self.core.stop()

    def mqtt(self, device: str) -> MqttEndpoint:
        return MqttEndpoint("127.0.0.1", self.edge_ports.mqtt, "tcp", device, self.tokens[device])

    # --- histories --------------------------------------------------------------------------

    def core_rows(self) -> list[str]:
        """sha256 of every row the core's database holds (a list: twice would show twice)."""
        path = self.core_dir / "core.db"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return [row[0] for row in db.execute("SELECT sha256 FROM images")]
        except sqlite3.OperationalError:  # not migrated yet
            return []
        finally:
            db.close()

    def core_objects(self) -> set[str]:
        return {p.stem for p in (self.core_dir / "objects" / "images").glob("*/*.jpg")}

    def spooled_now(self) -> set[str]:
        """What the edge's spool index holds at this moment (read-only, beside the writer)."""
        path = self.edge_dir / "spool" / "index.db"
        if not path.exists():
            return set()
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                return {row[0] for row in db.execute("SELECT sha256 FROM items")}
            finally:
                db.close()
        except sqlite3.Error:
            return set()

    def quarantined(self) -> list[Path]:
        return sorted((self.edge_dir / "quarantine").glob("*.json"))
