"""A shaped two-host link on this machine, for `bench/forward.py`.

Two network namespaces of our own, `e2c-edge-<pid>` (10.177.0.1) and `e2c-core-<pid>`
(10.177.0.2), joined by a link shaped like the issue's `tc netem rate 20mbit delay 40ms
loss 1%`, applied to the edge -> core direction only (the "sending side"): one-way delay
40 ms on the data path, ACKs come straight back, so the base RTT is 40 ms. A reverse delay
can be added (`reverse_delay_ms`), e.g. 20 + 20 for a 40 ms RTT split both ways.

Shapers, tried in this order by `shaper="auto"`:

- `netem`: a veth pair, `tc qdisc ... netem` on the edge's end (TSO/GSO off on both ends, so
  that loss hits 1% of wire packets, not 1% of 64 KB GSO bursts).
- `tun`: for kernels built without `sch_netem` (this sandbox's: `CONFIG_NET_SCH_NETEM` is
  not set). One TUN device in each namespace, and a small process (`python _netns.py
  emulate ...`) that moves IP packets between them doing what netem does: random loss,
  a FIFO serialised at the rate (Ethernet header counted, as netem counts it on a veth),
  then the fixed delay, with netem's default limit of 1000 packets held.
- `none`: the same two namespaces over a plain veth, unshaped (`shaped: false`).

Everything is removed on exit, also on Ctrl-C: processes we started in the namespaces (by
pid), the emulator, the namespaces (their veth/TUN devices go with them).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

EDGE_IP = "10.177.0.1"
CORE_IP = "10.177.0.2"
PREFIX = "e2c-"
NETNS_DIR = Path("/run/netns")


class LinkError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LinkError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_tools() -> None:
    if shutil.which("ip") and shutil.which("tc"):
        return
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "iproute2"], capture_output=True, check=False)
    if not (shutil.which("ip") and shutil.which("tc")):
        raise LinkError("`ip`/`tc` not found and `apt-get install -y iproute2` did not help")


def netem_available() -> bool:
    """Probe in a throwaway namespace: can this kernel do `tc qdisc add ... netem`?"""
    name = f"{PREFIX}probe-{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        proc = _run("ip", "-n", name, "link", "set", "lo", "up", check=False)
        proc = _run("tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                    check=False)
        return proc.returncode == 0
    finally:
        _run("ip", "netns", "del", name, check=False)


def remove_stale() -> list[str]:
    """Namespaces an earlier run of ours left behind (its pid is gone)."""
    removed = []
    listing = _run("ip", "netns", "list", check=False).stdout.split()
    for name in listing:
        if not name.startswith(PREFIX):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Link:
    rate_mbit: float = 20.0
    delay_ms: float = 40.0
    loss: float = 0.01
    reverse_delay_ms: float = 0.0
    shaper: str = "auto"  # auto | netem | tun | none
    congestion_control: str | None = None  # None: the kernel's default
    limit_packets: int = 1000
    mtu: int = 1500
    edge_ns: str = field(default_factory=lambda: f"{PREFIX}edge-{os.getpid()}")
    core_ns: str = field(default_factory=lambda: f"{PREFIX}core-{os.getpid()}")
    used: str = ""  # the shaper actually in use
    note: str = ""
    _emulator: subprocess.Popen[bytes] | None = None
    _stats_file: Path | None = None
    _children: list[subprocess.Popen] = field(default_factory=list)

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        ensure_tools()
        remove_stale()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        choice = self.shaper
        if choice == "auto":
            if netem_available():
                choice = "netem"
            elif Path("/dev/net/tun").exists():
                choice = "tun"
                self.note = ("sch_netem is not available in this kernel; netem emulated in user "
                             "space between two TUN devices")
            else:
                choice = "none"
                self.note = "neither sch_netem nor /dev/net/tun: the link is NOT shaped"
        for ns in (self.edge_ns, self.core_ns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # Fresh TCP state per connection: no cached ssthresh/RTT from earlier repeats.
            self.sysctl(ns, "net.ipv4.tcp_no_metrics_save", "1")
            if self.congestion_control:
                self.sysctl(ns, "net.ipv4.tcp_congestion_control", self.congestion_control)
        if choice == "tun":
            self._setup_tun()
        else:
            self._setup_veth(shaped=choice == "netem")
        self.used = choice

    def sysctl(self, ns: str, key: str, value: str) -> None:
        _run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")

    def sysctl_get(self, ns: str, key: str) -> str:
        return _run("ip", "netns", "exec", ns, "sysctl", "-n", key).stdout.strip()

    def _setup_veth(self, shaped: bool) -> None:
        edge_if, core_if = f"e2ce{os.getpid()}"[:15], f"e2cc{os.getpid()}"[:15]
        _run("ip", "link", "add", edge_if, "netns", self.edge_ns, "type", "veth",
             "peer", "name", core_if, "netns", self.core_ns)
        for ns, dev, ip in ((self.edge_ns, edge_if, EDGE_IP), (self.core_ns, core_if, CORE_IP)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up")
            if shaped:
                self._no_offloads(ns, dev)
        if not shaped:
            return
        netem = ["netem", "limit", str(self.limit_packets), "delay", f"{self.delay_ms}ms",
                 "rate", f"{self.rate_mbit}mbit"]
        if self.loss > 0:
            netem += ["loss", f"{self.loss * 100:g}%"]
        _run("tc", "-n", self.edge_ns, "qdisc", "add", "dev", edge_if, "root", *netem)
        if self.reverse_delay_ms > 0:
            _run("tc", "-n", self.core_ns, "qdisc", "add", "dev", core_if, "root", "netem",
                 "limit", str(self.limit_packets), "delay", f"{self.reverse_delay_ms}ms")

    def _no_offloads(self, ns: str, dev: str) -> None:
        if shutil.which("ethtool"):
            _run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
                 "gro", "off", check=False)
        else:  # no ethtool: at least keep GSO bursts at one segment
            _run("ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1", check=False)

    def _setup_tun(self) -> None:
        self._stats_file = Path(f"/tmp/{PREFIX}emu-{os.getpid()}.json")
        argv = [
            sys.executable, str(Path(__file__).resolve()), "emulate",
            "--edge-ns", self.edge_ns, "--core-ns", self.core_ns,
            "--rate-mbit", str(self.rate_mbit), "--delay-ms", str(self.delay_ms),
            "--loss", str(self.loss), "--reverse-delay-ms", str(self.reverse_delay_ms),
            "--limit", str(self.limit_packets), "--stats", str(self._stats_file),
        ]
        self._emulator = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None)
        assert self._emulator.stdout is not None
        line = self._emulator.stdout.readline().decode().strip()
        if line != "ready":
            raise LinkError(f"the link emulator did not start (said {line!r})")
        for ns, ip, peer in ((self.edge_ns, EDGE_IP, CORE_IP), (self.core_ns, CORE_IP, EDGE_IP)):
            _run("ip", "-n", ns, "addr", "add", ip, "peer", peer, "dev", "e2c0")
            _run("ip", "-n", ns, "link", "set", "e2c0", "mtu", str(self.mtu), "txqueuelen",
                 "1000", "up")

    def popen(self, ns: str, argv: list[str], **kwargs: object) -> subprocess.Popen:
        """Start a process inside one of our namespaces; it is killed on close()."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)  # type: ignore[call-overload]
        self._children.append(proc)
        return proc

    def emulator_stats(self) -> dict:
        """Counters from the user-space emulator (empty for netem/none)."""
        if self._emulator is None or self._stats_file is None:
            return {}
        self._stats_file.unlink(missing_ok=True)
        self._emulator.send_signal(signal.SIGUSR1)
        for _ in range(50):
            time.sleep(0.02)
            try:
                return json.loads(self._stats_file.read_text())
            except (OSError, ValueError):
                continue
        return {}

    def close(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._children.clear()
        for ns in (self.edge_ns, self.core_ns):
            # Anything still running in our namespaces was started by us (by pid only).
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        if self._emulator is not None:
            if self._emulator.poll() is None:
                self._emulator.terminate()
                try:
                    self._emulator.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._emulator.kill()
                    self._emulator.wait()
            self._emulator = None
        if self._stats_file is not None:
            self._stats_file.unlink(missing_ok=True)
        for ns in (self.edge_ns, self.core_ns):
            if (NETNS_DIR / ns).exists():
                _run("ip", "netns", "del", ns, check=False)

    def describe(self) -> dict:
        return {
            "shaper": self.used,
            "shaped": self.used in ("netem", "tun"),
            "rate_mbit": self.rate_mbit,
            "delay_ms_edge_to_core": self.delay_ms,
            "delay_ms_core_to_edge": self.reverse_delay_ms,
            "loss_edge_to_core": self.loss,
            "limit_packets": self.limit_packets,
            "mtu": self.mtu,
            "note": self.note,
        }


# --- the user-space netem (runs as its own process: no GIL shared with what it measures) ---

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_HEADER = 14  # netem on a veth counts the Ethernet header in its rate


def _setns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns})")
    finally:
        os.close(fd)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Direction:
    """One direction of the link: loss, then a FIFO serialised at `rate`, then `delay`."""

    def __init__(self, src: int, dst: int, *, rate_bps: float, delay_s: float, loss: float,
                 limit: int, seed: int) -> None:
        self.src, self.dst = src, dst
        self.rate_bps, self.delay_s, self.loss, self.limit = rate_bps, delay_s, loss, limit
        self.rng = random.Random(seed)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.cv = threading.Condition()
        self.free_at = 0.0
        self.stats = {"packets": 0, "bytes": 0, "lost": 0, "overflow": 0, "max_queue": 0,
                      "late_mean_ms": 0.0, "late_max_ms": 0.0}
        self.late_sum, self.late_n = 0.0, 0

    def start(self) -> None:
        direct = self.rate_bps <= 0 and self.delay_s <= 0
        threading.Thread(target=self._read, args=(direct,), daemon=True).start()
        if not direct:
            threading.Thread(target=self._write, daemon=True).start()

    def _read(self, direct: bool) -> None:
        stats, queue, clock = self.stats, self.queue, time.monotonic
        while True:
            packet = os.read(self.src, 65536)
            stats["packets"] += 1
            stats["bytes"] += len(packet)
            if self.loss > 0 and self.rng.random() < self.loss:
                stats["lost"] += 1
                continue
            if direct:
                os.write(self.dst, packet)
                continue
            now = clock()
            with self.cv:
                if len(queue) >= self.limit:
                    stats["overflow"] += 1
                    continue
                if self.rate_bps > 0:
                    self.free_at = max(now, self.free_at) + (len(packet) + ETH_HEADER) * 8 / self.rate_bps
                    due = self.free_at + self.delay_s
                else:
                    due = now + self.delay_s
                queue.append((due, packet))
                stats["max_queue"] = max(stats["max_queue"], len(queue))
                if len(queue) == 1:
                    self.cv.notify()

    def _write(self) -> None:
        queue, clock = self.queue, time.monotonic
        while True:
            with self.cv:
                while not queue:
                    self.cv.wait()
                due = queue[0][0]
                wait = due - clock()
                if wait > 0:
                    self.cv.wait(wait)  # due times only grow: nothing can jump ahead of the head
                    continue
                batch = []
                now = clock()
                late = now - due  # how far behind schedule the emulator delivers (CPU load)
                self.late_sum += late
                self.late_n += 1
                self.stats["late_max_ms"] = max(self.stats["late_max_ms"], round(late * 1e3, 2))
                self.stats["late_mean_ms"] = round(self.late_sum / self.late_n * 1e3, 3)
                while queue and queue[0][0] <= now:
                    batch.append(queue.popleft()[1])
            for packet in batch:
                try:
                    os.write(self.dst, packet)
                except OSError:
                    pass  # the receiving side's queue is full: a drop, as on a real link


def emulate(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="_netns.py emulate")
    parser.add_argument("--edge-ns", required=True)
    parser.add_argument("--core-ns", required=True)
    parser.add_argument("--rate-mbit", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--reverse-delay-ms", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    _setns(args.edge_ns)
    edge_fd = _open_tun("e2c0")
    _setns(args.core_ns)
    core_fd = _open_tun("e2c0")
    up = Direction(edge_fd, core_fd, rate_bps=args.rate_mbit * 1e6, delay_s=args.delay_ms / 1e3,
                   loss=args.loss, limit=args.limit, seed=args.seed)
    down = Direction(core_fd, edge_fd, rate_bps=0, delay_s=args.reverse_delay_ms / 1e3, loss=0.0,
                     limit=args.limit, seed=args.seed + 1)

    def dump(*_: object) -> None:
        args.stats.write_text(json.dumps({"edge_to_core": up.stats, "core_to_edge": down.stats}))

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    up.start()
    down.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "emulate":
        emulate(sys.argv[2:])
    else:
        sys.exit("usage: _netns.py emulate --edge-ns NS --core-ns NS --stats FILE [...]")
