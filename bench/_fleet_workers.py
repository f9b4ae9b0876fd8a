"""The processes that run bench/fleet.py's sites (`_fleet_site.py`, several sites each) and the
core's side of the measurements: its reports of the sites, its process's CPU, memory,
connections and database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from edge2core.common.processes import die_with_parent_preexec

HERE = Path(__file__).resolve().parent


@dataclass
class Worker:
    """One `_fleet_site.py` process and what it said on stdout."""

    config_path: Path
    log_path: Path
    sites: list[str]
    proc: subprocess.Popen[str] | None = None
    ready_at: float | None = None
    prices: dict[str, list[tuple[float | None, float]]] = field(default_factory=dict)  # site -> (price, at)
    last_stats: dict[str, Any] | None = None
    _stats_seen: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.ready_at, self._stats_seen = None, threading.Event()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["nice", "-n", "5", sys.executable, str(HERE / "_fleet_site.py"), str(self.config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            preexec_fn=die_with_parent_preexec())
        log.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "ready":
                self.ready_at = time.time()
            elif kind == "price":
                self.prices.setdefault(event["site"], []).append((event["price"], event["at"]))
            elif kind == "stats":
                self.last_stats = event
                self._stats_seen.set()

    def send(self, command: str) -> None:
        if self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()

    def stats(self, timeout: float = 30.0) -> dict[str, Any] | None:
        self._stats_seen.clear()
        self.send("stats")
        return self.last_stats if self._stats_seen.wait(timeout) else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """`quit`: the sites shut down in order (a site switched off), else killed."""
        if self.proc is None:
            return
        self.send("quit")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def make_workers(root: Path, specs: list[dict[str, Any]], common: dict[str, Any], per_process: int) -> list[Worker]:
    workers = []
    for i in range(0, len(specs), per_process):
        group = specs[i:i + per_process]
        path = root / f"worker-{i // per_process:03d}.json"
        path.write_text(json.dumps({**common, "sites": group}))
        workers.append(Worker(path, root / f"worker-{i // per_process:03d}.log", [s["site"] for s in group]))
    return workers


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1,
             workers: list[Worker] | None = None) -> Any:
    """`check()` until truthy; TimeoutError naming `what` (and a dead worker's log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for worker in workers or []:
            if worker.proc is not None and worker.proc.poll() is not None and worker.ready_at is None:
                raise RuntimeError(f"a site process died while waiting for {what}:\n{worker.tail()}")
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


class CoreView:
    """What the core knows, through its API and its process."""

    def __init__(self, http: httpx.Client, pid: int, data_dir: Path) -> None:
        self.http = http
        self.process = psutil.Process(pid)
        self.data_dir = data_dir

    def reports(self) -> dict[str, dict[str, Any]]:
        response = self.http.get("/v1/sites")
        response.raise_for_status()
        return dict(response.json()["sites"])

    def live_on(self, sites: list[str], version: int) -> dict[str, float] | None:
        """site -> the epoch second it said it went live on `version`, once every site has."""
        reports = self.reports()
        out = {}
        for site in sites:
            report = reports.get(site)
            if report is None or report["version"] != version or report["state"] != "live":
                return None
            out[site] = _epoch(report["at"])
        return out

    def _processes(self) -> list[psutil.Process]:
        """The core's Python process and its children (its nats-server)."""
        return [self.process, *self.process.children(recursive=True)]

    def cpu_s(self) -> dict[str, float]:
        out = {}
        for proc in self._processes():
            times = proc.cpu_times()
            out["python" if proc.pid == self.process.pid else proc.name()] = times.user + times.system
        return out

    def rss_mb(self) -> dict[str, float]:
        return {("python" if p.pid == self.process.pid else p.name()): round(p.memory_info().rss / 2**20, 1)
                for p in self._processes()}

    def connections(self) -> dict[str, int]:
        out = {}
        for proc in self._processes():
            established = [c for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED]
            out["python" if proc.pid == self.process.pid else proc.name()] = len(established)
        return out

    def images(self) -> int:
        with sqlite3.connect(f"file:{self.data_dir / 'core.db'}?mode=ro", uri=True, timeout=30) as db:
            return int(db.execute("SELECT count(*) FROM images").fetchone()[0])

    def db_bytes(self) -> tuple[int, int]:
        """The SQLite database file and its write-ahead log, in bytes."""
        main, wal = self.data_dir / "core.db", self.data_dir / "core.db-wal"
        return main.stat().st_size, wal.stat().st_size if wal.is_file() else 0


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
