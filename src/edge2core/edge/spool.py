"""The durable on-disk spool between the doors and the forwarder.

A photo is acknowledged to its device only after `put` returns: its bytes are fsync'd and its
index row committed (SQLite WAL, synchronous=FULL). It leaves only through `remove`, which the
forwarder calls once the core has confirmed the bytes. When full, the spool either refuses new
photos with `SpoolFull` (the default) or, by explicit policy, evicts photos of lower priority,
oldest first, to make room; every eviction is counted, logged and kept in the index's
`evictions` table. It never drops anything silently.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from edge2core.common.events import PhotoRecord
from edge2core.common.fsutil import fsync_dir, write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.metrics import (
    SPOOL_BYTES,
    SPOOL_EVICTED,
    SPOOL_INDEX_REPAIRED,
    SPOOL_ITEMS,
    SPOOL_OLDEST_AGE,
)

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_order ON items (priority DESC, created ASC);
-- MIN(created) for the oldest-age gauge, updated on every put and remove: one index seek
-- instead of a scan of the whole backlog.
CREATE INDEX IF NOT EXISTS items_created ON items (created);
CREATE TABLE IF NOT EXISTS evictions (
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    evicted REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_counts (
    label TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""


class WhenFull(StrEnum):
    REFUSE = "refuse"
    EVICT = "evict"


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
    evicted: int = 0


class Spool:
    def __init__(
        self, root: Path, budget_bytes: int, when_full: WhenFull = WhenFull.REFUSE
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.when_full = when_full
        self._objects = root / "objects"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._open_index()
        self._remove_orphans()
        # Running totals, loaded once and kept under `_lock` by put/_evict/remove: the budget
        # check and the gauges then need no COUNT/SUM over the whole backlog on every photo.
        items, used = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM items"
        ).fetchone()
        self._items, self._bytes = int(items), int(used)
        self._evicted = int(self._db.execute("SELECT COUNT(*) FROM evictions").fetchone()[0])
        self._update_gauges()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "index.db", check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _Corrupt("the spool index failed its integrity check")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _open_index(self) -> sqlite3.Connection:
        """The index, or, when it is corrupt (a disk fault, a bad power cut), a new one holding
        every row that could still be read; the old file and the photos whose rows were lost
        are moved to `quarantine/` for an operator. Never a crash, never a silent drop."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):  # "locked", "readonly", ...: not ours to repair
                raise
            broken = self.root / "quarantine" / f"index-{time.time_ns()}"
            broken.mkdir(parents=True)
            for name in ("index.db", "index.db-wal", "index.db-shm"):
                if (self.root / name).exists():
                    os.replace(self.root / name, broken / name)
            rows = _salvage_rows(broken / "index.db")
            db = self._connect()
            db.executemany(
                "INSERT OR IGNORE INTO items (sha256, size, priority, created, record) "
                "VALUES (?,?,?,?,?)",
                [row for row in rows if self._path(row[0]).is_file()],
            )
            kept = {row[0] for row in db.execute("SELECT sha256 FROM items")}
            lost = [path for path in self._objects.glob("*/*")
                    if path.name not in kept and not path.name.startswith(".tmp-")]
            for path in lost:  # acknowledged once, perhaps: kept aside, never deleted
                os.replace(path, broken / path.name)
            fsync_dir(broken)
            SPOOL_INDEX_REPAIRED.inc()
            log.error("spool index was corrupt: rebuilt from what could be read", error=str(exc),
                      salvaged=len(kept), quarantined=len(lost), folder=str(broken))
            return db

    def _path(self, sha256: str) -> Path:
        return self._objects / sha256[:2] / sha256

    def put(self, record: PhotoRecord, data: bytes, priority: int) -> bool:
        """Store durably; False if the same bytes are already waiting (a duplicate).

        Raises `SpoolFull` when the budget is spent or the disk itself is full (ENOSPC,
        EDQUOT, SQLite's "database or disk is full"): a refusal, and nothing half-written
        stays behind."""
        with self._lock:
            if self._contains(record.sha256):
                return False
            self._make_room(len(data), priority)
            try:
                self._write(record, data, priority)
            except (OSError, sqlite3.OperationalError) as exc:
                self._path(record.sha256).unlink(missing_ok=True)
                if not _disk_full(exc):
                    raise
                raise SpoolFull(
                    f"the edge's disk is full ({exc}); the photo was not kept. Free space on "
                    f"the spool's volume or restore the link to the core."
                ) from exc
            self._items += 1
            self._bytes += len(data)
        self._update_gauges()
        return True

    def _write(self, record: PhotoRecord, data: bytes, priority: int) -> None:
        write_atomic(self._path(record.sha256), [data])
        with self._transaction():
            self._db.execute(
                "INSERT INTO items (sha256, size, priority, created, record) VALUES (?,?,?,?,?)",
                (record.sha256, len(data), priority, time.time(), record.model_dump_json()),
            )
            if record.sku:
                self._db.execute(
                    "INSERT INTO label_counts (label, count) VALUES (?, 1) "
                    "ON CONFLICT(label) DO UPDATE SET count = count + 1",
                    (record.sku,),
                )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection is in autocommit mode; group statements explicitly.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back by itself (disk full)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def label_count(self, label: str) -> int:
        """How many photos with this label this site has ever spooled."""
        with self._lock:  # the connection is shared with the doors' and forwarder's threads
            row = self._db.execute(
                "SELECT count FROM label_counts WHERE label = ?", (label,)
            ).fetchone()
        return int(row[0]) if row else 0

    def _make_room(self, size: int, priority: int) -> None:
        used = self._bytes
        if used + size <= self.budget_bytes:
            return
        victims = self._eviction_candidates(used + size - self.budget_bytes, priority)
        if victims is None:
            hint = (
                "nothing of lower priority is left to evict"
                if self.when_full == WhenFull.EVICT
                else "the policy is to refuse"
            )
            raise SpoolFull(
                f"spool holds {used} of {self.budget_bytes} bytes and this photo needs {size} "
                f"({hint}). Raise the budget, restore the link to the core, or set "
                f"when_full=evict."
            )
        for sha256, victim_size, victim_priority, record in victims:
            self._evict(sha256, victim_size, victim_priority, record)

    def _eviction_candidates(
        self, needed: int, priority: int
    ) -> list[tuple[str, int, int, str]] | None:
        if self.when_full != WhenFull.EVICT:
            return None
        rows = self._db.execute(
            "SELECT sha256, size, priority, record FROM items WHERE priority < ? "
            "ORDER BY priority ASC, created ASC",
            (priority,),
        )
        chosen, freed = [], 0
        for row in rows:
            chosen.append(row)
            freed += row[1]
            if freed >= needed:
                return chosen
        return None

    def _evict(self, sha256: str, size: int, priority: int, record: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM items WHERE sha256 = ?", (sha256,))
            self._db.execute(
                "INSERT INTO evictions (sha256, size, priority, evicted, record) "
                "VALUES (?,?,?,?,?)",
                (sha256, size, priority, time.time(), record),
            )
        self._items -= 1
        self._bytes -= size
        self._evicted += 1
        self._path(sha256).unlink(missing_ok=True)
        source = PhotoRecord.model_validate_json(record).source.value
        SPOOL_EVICTED.labels(source=source).inc()
        log.warning("spool full: evicted a lower-priority photo", sha256=sha256,
                    priority=priority, size=size, source=source)

    def pending(self, limit: int, exclude: frozenset[str] = frozenset()) -> list[SpoolItem]:
        """The next photos to forward: highest priority first, then oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, size, priority, created, record FROM items "
                "ORDER BY priority DESC, created ASC LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        # Filter and slice first: parse only the records that are returned.
        wanted = [row for row in rows if row[0] not in exclude][:limit]
        return [
            SpoolItem(sha, size, prio, created, PhotoRecord.model_validate_json(rec))
            for sha, size, prio, created, rec in wanted
        ]

    def read(self, sha256: str) -> bytes:
        return self._path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        with self._lock:
            # Its size, for the running totals (no RETURNING: that needs SQLite >= 3.35).
            row = self._db.execute("SELECT size FROM items WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:  # None when removed twice (a repeated confirmation)
                self._db.execute("DELETE FROM items WHERE sha256 = ?", (sha256,))
                self._items -= 1
                self._bytes -= row[0]
            path = self._path(sha256)
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        self._update_gauges()

    def stats(self) -> SpoolStats:
        with self._lock:
            count, size, evicted = self._items, self._bytes, self._evicted
            oldest = self._db.execute("SELECT MIN(created) FROM items").fetchone()[0]
        age = time.time() - oldest if oldest is not None else None
        return SpoolStats(
            items=count, bytes=size, budget_bytes=self.budget_bytes, oldest_age_s=age,
            evicted=evicted,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _contains(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM items WHERE sha256 = ?", (sha256,)).fetchone() is not None

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
        SPOOL_OLDEST_AGE.set(stats.oldest_age_s or 0.0)


class _Corrupt(sqlite3.DatabaseError):
    pass


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """The index file itself is damaged (not busy, locked or read-only)."""
    name = getattr(exc, "sqlite_errorname", "")
    return isinstance(exc, _Corrupt) or name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc).lower()  # sqlite3: "database or disk is full"


def _salvage_rows(path: Path) -> list[tuple[str, int, int, float, str]]:
    """The items rows a corrupt index still yields, up to the first unreadable page."""
    rows: list[tuple[str, int, int, float, str]] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows
    try:
        cursor = db.execute("SELECT sha256, size, priority, created, record FROM items")
        for row in cursor:
            if isinstance(row[0], str) and len(row[0]) == 64:
                rows.append(row)
    except sqlite3.Error:
        pass  # keep what came before the damage
    finally:
        db.close()
    return rows
