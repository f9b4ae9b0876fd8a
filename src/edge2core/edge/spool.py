"""The durable on-disk spool between the doors and the forwarder.

A photo is acknowledged to its device only after `put` returns: its bytes are fsync'd and its
index row committed (SQLite WAL, synchronous=FULL). It leaves only through `remove`, which the
forwarder calls once the core has confirmed the bytes. A full spool refuses new photos with
`SpoolFull` rather than dropping old ones.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge2core.common.events import PhotoRecord
from edge2core.common.fsutil import fsync_dir, write_atomic
from edge2core.common.metrics import SPOOL_BYTES, SPOOL_ITEMS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_order ON items (priority DESC, created ASC);
"""


class SpoolFull(RuntimeError):
    """No room within the disk budget; the caller must refuse the photo, not drop it."""


@dataclass(frozen=True)
class SpoolItem:
    sha256: str
    size: int
    priority: int
    created: float
    record: PhotoRecord


@dataclass(frozen=True)
class SpoolStats:
    items: int
    bytes: int
    budget_bytes: int
    oldest_age_s: float | None


class Spool:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._objects = root / "objects"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "index.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._remove_orphans()
        self._update_gauges()

    def _path(self, sha256: str) -> Path:
        return self._objects / sha256[:2] / sha256

    def put(self, record: PhotoRecord, data: bytes, priority: int) -> bool:
        """Store durably; False if the same bytes are already waiting (a duplicate)."""
        with self._lock:
            if self._contains(record.sha256):
                return False
            used = self._used_bytes()
            if used + len(data) > self.budget_bytes:
                raise SpoolFull(
                    f"spool holds {used} of {self.budget_bytes} bytes; this photo needs "
                    f"{len(data)}. Raise the budget or restore the link to the core."
                )
            write_atomic(self._path(record.sha256), [data])
            self._db.execute(
                "INSERT INTO items (sha256, size, priority, created, record) VALUES (?,?,?,?,?)",
                (record.sha256, len(data), priority, time.time(), record.model_dump_json()),
            )
        self._update_gauges()
        return True

    def pending(self, limit: int, exclude: frozenset[str] = frozenset()) -> list[SpoolItem]:
        """The next photos to forward: highest priority first, then oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, size, priority, created, record FROM items "
                "ORDER BY priority DESC, created ASC LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        items = [
            SpoolItem(sha, size, prio, created, PhotoRecord.model_validate_json(rec))
            for sha, size, prio, created, rec in rows
            if sha not in exclude
        ]
        return items[:limit]

    def read(self, sha256: str) -> bytes:
        return self._path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM items WHERE sha256 = ?", (sha256,))
            path = self._path(sha256)
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        self._update_gauges()

    def stats(self) -> SpoolStats:
        with self._lock:
            count, size, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM items"
            ).fetchone()
        age = time.time() - oldest if oldest is not None else None
        return SpoolStats(items=count, bytes=size, budget_bytes=self.budget_bytes, oldest_age_s=age)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _contains(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM items WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def _used_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0])

    def _remove_orphans(self) -> None:
        """Files without an index row were never acknowledged (a crash mid-put): drop them."""
        known = {row[0] for row in self._db.execute("SELECT sha256 FROM items")}
        for path in self._objects.glob("*/*"):
            if path.name not in known:
                path.unlink()

    def _update_gauges(self) -> None:
        stats = self.stats()
        SPOOL_ITEMS.set(stats.items)
        SPOOL_BYTES.set(stats.bytes)
