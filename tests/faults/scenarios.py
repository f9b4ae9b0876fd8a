"""The faults, by name: each takes a running `Cluster` and gives a `Fault` to inject and heal.

The edge's gateway, forwarder and model agent are one process (`edge2core edge up`), its NATS
server a child of it; the core's API, ingest and learning loop are one process
(`edge2core core up`), its NATS server a child of it. So "kill -9 of each process in turn" is
four kills: the edge, the edge's broker, the core, the core's broker. Killed roles are started
again by the test, the way a service manager (systemd `Restart=always`) would; killed brokers
are restarted by their role's own supervision, with nothing done by the test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.cluster import Cluster, Role
from tests.faults.histories import Fault
from tests.faults.link import CoreLink, DrainMeter
from tests.faults.volumes import Filler


def _restart(role: Role) -> Callable[[], None]:
    def heal() -> None:
        role.start()
        role.wait_healthy()
    return heal


def _kill_child(role: Role, name: str) -> Callable[[], None]:
    def inject() -> None:
        pids = role.children(name)
        assert pids, f"{role.role} runs no {name} child"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    return inject


def _nothing() -> None:
    return None


def edge_killed(cluster: Cluster) -> Fault:
    return Fault("kill -9 edge", cluster.edge.kill, _restart(cluster.edge))


def core_killed(cluster: Cluster) -> Fault:
    return Fault("kill -9 core", cluster.core.kill, _restart(cluster.core), fault_s=4.0)


def edge_broker_killed(cluster: Cluster) -> Fault:
    return Fault("kill -9 edge nats-server", _kill_child(cluster.edge, "nats-server"), _nothing,
                 fault_s=0.0)


def core_broker_killed(cluster: Cluster) -> Fault:
    return Fault("kill -9 core nats-server", _kill_child(cluster.core, "nats-server"), _nothing,
                 fault_s=0.0)


KILLS: dict[str, Callable[[Cluster], Fault]] = {
    "edge": edge_killed,
    "edge-broker": edge_broker_killed,
    "core": core_killed,
    "core-broker": core_broker_killed,
}


def disk_full(name: str, folder: Path, fault_s: float = 4.0) -> Fault:
    """Every free byte of the volume holding `folder` taken for `fault_s`, then given back."""
    filler = Filler(folder)
    return Fault(name, lambda: None if filler.fill() else None, filler.release, fault_s=fault_s)


def partition(cluster: Cluster, link: CoreLink, fault_s: float) -> Fault:
    """The core's end of the link goes dark for `fault_s`, then comes back; the drain after."""
    meter = DrainMeter(cluster.edge_ports.url, link.bytes_per_s)
    return Fault(f"partition {fault_s:g}s", link.cut, link.heal, fault_s=fault_s, meter=meter)


def flapping(link: CoreLink, total_s: float, down_s: float = 2.0, up_s: float = 3.0) -> Fault:
    """Down `down_s`, up `up_s`, again and again for `total_s` (all of it under load)."""
    def inject() -> None:
        end = time.monotonic() + total_s
        while time.monotonic() < end:
            link.cut()
            time.sleep(down_s)
            link.heal()
            time.sleep(up_s)
    return Fault(f"flapping {total_s:g}s", inject, link.heal, fault_s=0.0)



FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def clock_env(offset: str) -> dict[str, str]:
    """The environment that runs a role on a clock `offset` (e.g. `+3h`) from the host's, by
    libfaketime. Fixed for the process's life: its monotonic clock moves with it (libfaketime
    0.9.10 makes Python 3.11's sleeps fail with EINVAL when only wall time is faked), so a jump
    while running would stretch every pending sleep; roles start skewed instead."""
    return {"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset}


def skewed_run(edge: str, core: str) -> Fault:
    """No injected event: the whole run (load, spooling, forwarding, retention) happens with
    the two roles' clocks hours apart, which the cluster was started with (`clock_env`)."""
    return Fault(f"clocks edge {edge} core {core}", lambda: None, lambda: None, fault_s=5.0)
