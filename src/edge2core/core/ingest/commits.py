"""Durability machinery for batched database commits; it knows nothing about photos.

`GroupCommit`: concurrent callers hand their items to whichever thread is committing, which
commits them all at once, then wakes them. `WalCommits`: on SQLite in WAL mode, those commits
are made durable outside the write lock (one fsync of the WAL covers every commit before it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from edge2core.core.db.engine import make_engine, make_sessionmaker

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Commit:
    seq = 0


class WalCommits:
    """Batch commits on SQLite in WAL mode, made durable outside the write lock.

    With `synchronous=FULL` SQLite fsyncs the WAL inside COMMIT, holding the write lock, so
    the next batch waits for the disk twice (the fsync in flight, then its own). The
    receiver's own connections use `synchronous=NORMAL` instead (the commit only writes the
    WAL), and every upload then waits, before it is acknowledged, for an fsync of the WAL
    file that started after its batch committed: the next batch commits while that fsync is
    in flight, and one fsync covers every commit made before it began. An acknowledged row
    is as durable as with FULL: its WAL frames are on disk, or a checkpoint already copied
    them into the database file, which SQLite syncs before it reuses the WAL. A crash before
    the fsync can lose rows that nobody was told about, as with FULL.
    """

    def __init__(self, url: str, wal: Path) -> None:
        self.engine = make_engine(url, synchronous="NORMAL")
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.wal = wal
        self._mutex = threading.Lock()
        self._commit_lock = threading.Lock()  # held across a commit and its numbering
        self._committed = 0  # batch commits made on `engine`
        self._synced = 0  # of which known durable
        self._dir_synced_for = -1  # inode of the WAL file whose directory entry was synced

    @classmethod
    def for_engine(cls, engine: Engine) -> WalCommits | None:
        url = engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        if url.query:  # uri= and other options: keep SQLite's own FULL commits
            return None
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":
            return None
        database = Path(url.database).resolve()
        return cls(f"sqlite:///{database}", Path(f"{database}-wal"))

    @contextmanager
    def committing(self) -> Iterator[_Commit]:
        """Wrap a commit on `engine`: afterwards `.seq` is its number for `sync`. Readers
        asking `latest()` meanwhile wait for it, so a row they can see is always counted."""
        commit = _Commit()
        with self._commit_lock:
            yield commit
            with self._mutex:
                self._committed += 1
                commit.seq = self._committed

    def latest(self) -> int:
        """The newest commit made so far (covering every row a reader may already see)."""
        with self._commit_lock, self._mutex:
            return self._committed

    def sync(self, seq: int) -> None:
        """Return once commit `seq` is on disk (an fsync of the WAL begun after it)."""
        with self._mutex:
            if self._synced >= seq:
                return
            covered = self._committed
        try:
            fd = os.open(self.wal, os.O_RDONLY)
        except FileNotFoundError:
            # No WAL: the last connection checkpointed it into the database file (synced)
            # and removed it.
            pass
        else:
            try:
                os.fsync(fd)
                self._sync_dir_once(os.fstat(fd).st_ino)
            finally:
                os.close(fd)
        with self._mutex:
            self._synced = max(self._synced, covered)

    def _sync_dir_once(self, inode: int) -> None:
        """A WAL file SQLite (re)created must also be named durably: fsync its directory
        once per new file, as SQLite's FULL mode would."""
        if inode == self._dir_synced_for:
            return
        fd = os.open(self.wal.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._dir_synced_for = inode


class GroupCommit(Generic[Item, Result]):
    """Leader/follower batching: the first caller commits everything queued meanwhile.

    `commit` takes a batch of items and returns one result per item, in order; an exception
    it raises is raised to every caller whose item was in the batch.
    """

    def __init__(self, commit: Callable[[list[Item]], list[Result]]) -> None:
        self._commit = commit
        self._mutex = threading.Lock()
        self._queue: list[Slot[Item, Result]] = []
        self._leading = False

    def enqueue(self, item: Item) -> Slot[Item, Result]:
        slot = Slot[Item, Result](item)
        with self._mutex:
            self._queue.append(slot)
        return slot

    def wait(self, slot: Slot[Item, Result]) -> Result:
        """The item's result, committing the queue if no other thread is."""
        while not slot.done.is_set():
            with self._mutex:
                lead = not self._leading
                self._leading = True
            if lead:
                self._lead()
            else:
                # The leader drains the queue until it is empty, so it takes this slot.
                slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return cast(Result, slot.result)

    def _lead(self) -> None:
        while True:
            with self._mutex:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            try:
                for s, result in zip(batch, self._commit([b.item for b in batch]), strict=True):
                    s.result = result
            except BaseException as exc:  # handed to every waiter
                for s in batch:
                    s.error = exc
            for s in batch:
                s.done.set()


class Slot(Generic[Item, Result]):
    """One item handed to a `GroupCommit`, and its outcome once `done`."""

    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
