"""The link between edge and core as a real network link: the core runs in a network
namespace of ours, joined to this host by a veth pair shaped with `tc tbf` (a rate, both
ways). A partition sets the core's end of the pair down: packets towards the core vanish
without an answer (no reset, no "unreachable"), as when a shop's uplink dies; healing sets it
up again. Needs root and `ip netns`; `unavailable()` says why not.

(`bench/_netns.py` shapes with netem or a user-space emulator for the forwarding benchmark;
here only a rate and a cut are needed, which `tbf` and link state give on any kernel.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import httpx

SUBNET = "10.178.{n}"


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """None when namespaces, veth pairs and tbf can be used here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "`ip`/`tc` (iproute2) not installed"
    probe = f"e2cf-probe-{os.getpid()}"
    made = _ip("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        tbf = _ip("tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit",
                  "burst", "32kbit", "latency", "100ms", check=False)
        return None if tbf.returncode == 0 else f"tc tbf unavailable: {tbf.stderr.strip()}"
    finally:
        _ip("ip", "netns", "del", probe, check=False)


@dataclass
class CoreLink:
    """`with CoreLink(rate_mbit=8) as link:` then start the core with `link.prefix`."""

    rate_mbit: float = 8.0
    n: int = field(default_factory=lambda: 1 + os.getpid() % 250)
    ns: str = field(init=False)
    host_if: str = field(init=False)
    core_if: str = field(init=False)

    def __post_init__(self) -> None:
        self.ns = f"e2cf-core-{os.getpid()}"
        self.host_if, self.core_if = f"e2cfh{os.getpid()}"[:15], f"e2cfc{os.getpid()}"[:15]

    @property
    def host_ip(self) -> str:
        return SUBNET.format(n=self.n) + ".1"

    @property
    def core_ip(self) -> str:
        return SUBNET.format(n=self.n) + ".2"

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    @property
    def bytes_per_s(self) -> float:
        return self.rate_mbit * 1e6 / 8

    def __enter__(self) -> CoreLink:
        _ip("ip", "netns", "del", self.ns, check=False)  # a leftover of a killed run of ours
        _ip("ip", "netns", "add", self.ns)
        try:
            _ip("ip", "-n", self.ns, "link", "set", "lo", "up")
            _ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.core_if,
                "netns", self.ns)
            _ip("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            _ip("ip", "-n", self.ns, "addr", "add", f"{self.core_ip}/24", "dev", self.core_if)
            _ip("ip", "link", "set", self.host_if, "up")
            _ip("ip", "-n", self.ns, "link", "set", self.core_if, "up")
            tbf = ["tbf", "rate", f"{self.rate_mbit}mbit", "burst", "64kbit", "latency", "200ms"]
            _ip("tc", "qdisc", "add", "dev", self.host_if, "root", *tbf)
            _ip("tc", "-n", self.ns, "qdisc", "add", "dev", self.core_if, "root", *tbf)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def cut(self) -> None:
        _ip("ip", "-n", self.ns, "link", "set", self.core_if, "down")

    def heal(self) -> None:
        _ip("ip", "-n", self.ns, "link", "set", self.core_if, "up")

    def close(self) -> None:
        _ip("ip", "link", "del", self.host_if, check=False)  # its peer goes with it
        _ip("ip", "netns", "del", self.ns, check=False)


class DrainMeter:
    """Samples the edge's status (spool backlog, bytes the core confirmed) every `every_s`;
    `result(healed)` gives the drain after a heal: the goodput from the first confirmation
    after the heal until the spool was empty, against the link's capacity."""

    def __init__(self, edge_url: str, link_bytes_per_s: float, every_s: float = 0.5) -> None:
        self.url, self.capacity, self.every_s = f"{edge_url}/v1/status", link_bytes_per_s, every_s
        self.samples: list[tuple[float, int, int, float]] = []  # (t, items, bytes, confirmed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stops once a sample has seen the spool empty (the drain's end), or after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (self.samples and self.samples[-1][1] == 0):
            time.sleep(self.every_s)
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(self.every_s):
                try:
                    status = http.get(self.url).json()
                except (httpx.HTTPError, ValueError):
                    continue
                confirmed = float(status["counters"].get("forwarded_bytes", 0.0))
                spool = status["spool"]
                self.samples.append((time.monotonic(), spool["items"], spool["bytes"], confirmed))

    def result(self, healed: float) -> dict[str, float | int | str]:
        after = [s for s in self.samples if s[0] >= healed]
        if not after:
            return {"drain_note": "no samples after the heal"}
        backlog = after[0][2]
        first = next((s for s in after if s[3] > after[0][3]), None)
        empty = next((s for s in after if first and s[0] > first[0] and s[1] == 0), None)
        if first is None or empty is None or empty[0] <= first[0]:
            return {"backlog_bytes": backlog, "drain_note": "did not drain while measured"}
        # From the sample before the first confirmation: the bytes confirmed in between count.
        start = after[max(0, after.index(first) - 1)]
        rate = (empty[3] - start[3]) / (empty[0] - start[0])
        return {"backlog_bytes": backlog, "drain_bytes_per_s": round(rate),
                "link_bytes_per_s": round(self.capacity),
                "drain_ratio": round(rate / self.capacity, 3),
                "drain_start_s": round(first[0] - healed, 2)}
