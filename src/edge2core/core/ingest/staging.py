"""Where resumable uploads keep their bytes and state until they finish, and who may append.

- `FolderStaging`: a local folder (the default): `<sha256>.part` (the bytes, appended and
  fsync'd) and `<sha256>.json` (the state). Core processes sharing the data folder share it.
- `ObjectStaging`: in the object store itself (S3), so that every core process behind a load
  balancer sees every upload: each checkpoint of a PATCH is one object
  `uploads/staging/<sha256>/part-<offset>` and the state is `.../state.json`, written after
  the part, so the state never names bytes that are not stored. Parts are keyed by where they
  start: a crash's leftovers at or past the durable offset are dropped on the next append.

- `LocalLocks`: one request at a time per upload, in this process (one core process).
- `AdvisoryLocks`: the same across core processes on PostgreSQL: a session advisory lock on
  the upload's id, held on a connection of its own for the request (a process that dies lets
  go with its connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text

from edge2core.common.fsutil import write_atomic
from edge2core.common.objectstore import ObjectNotFound, ObjectStore
from edge2core.core.ingest.errors import UploadBusy

_BLOCK = 1 << 20
PREFIX = "uploads/staging"


class Appender(Protocol):
    def write(self, chunk: bytes) -> None:
        """Raises OSError when the staging store fails (full disk, object store down)."""

    def flush(self) -> None:
        """Make everything written durable; OSError as `write`."""

    def close(self) -> None: ...


class Staging(Protocol):
    dir: Path  # a local folder for files on their way into the store

    def read_state(self, sha256: str) -> bytes | None: ...
    def write_state(self, sha256: str, data: bytes) -> None: ...
    def durable(self, sha256: str, claimed: int) -> int:
        """How many of the `claimed` bytes are really held."""
    def start(self, sha256: str) -> None:
        """An empty upload (its bytes dropped)."""
    def appender(self, sha256: str, offset: int) -> Appender:
        """Append from `offset`, dropping anything held past it. OSError if impossible."""
    def read(self, sha256: str, upto: int) -> Iterator[bytes]: ...
    def finished_file(self, sha256: str, length: int) -> Path:
        """A local file with the upload's bytes, for the receiver to store (and remove)."""
    def discard(self, sha256: str) -> bool: ...
    def ids(self) -> list[str]:
        """Every upload with a state."""
    def purge_orphans(self, older_than_s: float) -> None:
        """Bytes whose state never made it (a crash at the very start)."""


class FolderStaging:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)

    def part(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.part"

    def _state(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.json"

    def read_state(self, sha256: str) -> bytes | None:
        try:
            return self._state(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def write_state(self, sha256: str, data: bytes) -> None:
        write_atomic(self._state(sha256), [data])

    def durable(self, sha256: str, claimed: int) -> int:
        try:
            return min(claimed, self.part(sha256).stat().st_size)
        except FileNotFoundError:
            return 0

    def start(self, sha256: str) -> None:
        with self.part(sha256).open("wb") as fh:
            os.fsync(fh.fileno())

    def appender(self, sha256: str, offset: int) -> Appender:
        # O_CREAT: the part file may be gone (moved into the store by a finish that then
        # failed to record the photo); the offset then reads 0 and the upload starts over.
        return _FileAppender(os.open(self.part(sha256), os.O_WRONLY | os.O_CREAT, 0o644), offset)

    def read(self, sha256: str, upto: int) -> Iterator[bytes]:
        with self.part(sha256).open("rb") as fh:
            remaining = upto
            while remaining > 0 and (block := fh.read(min(_BLOCK, remaining))):
                remaining -= len(block)
                yield block

    def finished_file(self, sha256: str, length: int) -> Path:
        return self.part(sha256)

    def discard(self, sha256: str) -> bool:
        found = self._state(sha256).exists()
        self._state(sha256).unlink(missing_ok=True)
        self.part(sha256).unlink(missing_ok=True)
        return found

    def ids(self) -> list[str]:
        return sorted(meta.stem for meta in self.dir.glob("*.json"))

    def purge_orphans(self, older_than_s: float) -> None:
        import time

        for part in self.dir.glob("*.part"):
            if not self._state(part.stem).exists() and part.stat().st_mtime < time.time() - older_than_s:
                part.unlink(missing_ok=True)


class _FileAppender:
    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        try:
            os.ftruncate(fd, offset)  # drop bytes past the durable offset (a crash's tail)
            os.lseek(fd, offset, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class ObjectStaging:
    """Uploads in progress as objects (see the module's docstring); `scratch` is a local
    folder where a finished upload is put together for the receiver."""

    def __init__(self, store: ObjectStore, scratch: Path, *, part_max: int = 8 << 20) -> None:
        self.store = store
        self.dir = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.part_max = part_max  # a longer body is put as several parts (bounded memory)

    @staticmethod
    def _state(sha256: str) -> str:
        return f"{PREFIX}/{sha256}/state.json"

    @staticmethod
    def _part(sha256: str, start: int) -> str:
        return f"{PREFIX}/{sha256}/part-{start:015d}"

    def _parts(self, sha256: str) -> list[tuple[int, str]]:
        found = []
        for key in self.store.list(f"{PREFIX}/{sha256}/part-"):
            found.append((int(key.rsplit("-", 1)[1]), key))
        return sorted(found)

    def read_state(self, sha256: str) -> bytes | None:
        try:
            return self.store.get(self._state(sha256))
        except ObjectNotFound:
            return None

    def write_state(self, sha256: str, data: bytes) -> None:
        self.store.put(self._state(sha256), data)

    def durable(self, sha256: str, claimed: int) -> int:
        return claimed  # parts are stored before the state that counts them

    def start(self, sha256: str) -> None:
        for _start, key in self._parts(sha256):
            self.store.delete(key)

    def appender(self, sha256: str, offset: int) -> Appender:
        try:
            for start, key in self._parts(sha256):
                if start >= offset:
                    self.store.delete(key)
        except Exception as exc:  # the object store is down: the core's fault, not the client's
            raise OSError(errno.EIO, "object store unavailable") from exc
        return _ObjectAppender(self, sha256, offset)

    def read(self, sha256: str, upto: int) -> Iterator[bytes]:
        remaining = upto
        for start, key in self._parts(sha256):
            if remaining <= 0 or start >= upto:
                break
            block = self.store.get(key)[: remaining]
            remaining -= len(block)
            yield block

    def finished_file(self, sha256: str, length: int) -> Path:
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".finish-")
        with os.fdopen(fd, "wb") as fh:
            for block in self.read(sha256, length):
                fh.write(block)
        return Path(name)

    def discard(self, sha256: str) -> bool:
        keys = list(self.store.list(f"{PREFIX}/{sha256}/"))
        for key in keys:
            self.store.delete(key)
        return self._state(sha256) in keys

    def ids(self) -> list[str]:
        return sorted(key.split("/")[-2] for key in self.store.list(f"{PREFIX}/")
                      if key.endswith("/state.json"))

    def purge_orphans(self, older_than_s: float) -> None:
        """Parts without a state are rare (a crash between the first part and the state);
        they go with the next `discard` of the same id, and object-store lifecycle rules on
        the `uploads/staging/` prefix can expire them."""


class _ObjectAppender:
    def __init__(self, staging: ObjectStaging, sha256: str, offset: int) -> None:
        self.staging = staging
        self.sha256 = sha256
        self.start = offset
        self.buffer: list[bytes] = []
        self.buffered = 0

    def write(self, chunk: bytes) -> None:
        self.buffer.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= self.staging.part_max:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        data = b"".join(self.buffer)
        try:
            self.staging.store.put(self.staging._part(self.sha256, self.start), data)
        except Exception as exc:
            raise OSError(errno.EIO, "object store unavailable") from exc
        self.start += len(data)
        self.buffer, self.buffered = [], 0

    def close(self) -> None:
        self.buffer, self.buffered = [], 0  # unflushed bytes were never counted


# --- who may append ------------------------------------------------------------------------


class UploadLocks(Protocol):
    def hold(self, sha256: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held for one request; raises `UploadBusy` if another request holds it."""


class LocalLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, sha256: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        if lock.locked():
            raise UploadBusy("another request is appending to this upload")
        async with lock:
            yield
        if not lock.locked():
            self._locks.pop(sha256, None)


def advisory_key(sha256: str) -> int:
    """The upload's id as a signed 64-bit PostgreSQL advisory lock key."""
    return int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)


class AdvisoryLocks:
    """Session advisory locks on PostgreSQL, on connections of their own (`pool_size` at most
    held at once per process, more wait for one)."""

    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.engine: Engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                            pool_pre_ping=True)
        self._local = LocalLocks()  # this process's own requests never reach the database

    @contextlib.asynccontextmanager
    async def hold(self, sha256: str) -> AsyncIterator[None]:
        async with self._local.hold(sha256):
            conn = await asyncio.to_thread(self.engine.connect)
            try:
                taken = await asyncio.to_thread(self._run, conn, "pg_try_advisory_lock", sha256)
                if not taken:
                    raise UploadBusy("another request is appending to this upload")
                try:
                    yield
                finally:
                    await asyncio.shield(asyncio.to_thread(self._unlock, conn, sha256))
            finally:
                await asyncio.shield(asyncio.to_thread(conn.close))

    @staticmethod
    def _run(conn: Connection, function: str, sha256: str) -> bool:
        # `function` is one of two literals above, never input; the key is a bound parameter.
        result = conn.execute(text(f"SELECT {function}(:key)"),
                              {"key": advisory_key(sha256)}).scalar()
        conn.commit()
        return bool(result)

    def _unlock(self, conn: Connection, sha256: str) -> None:
        try:
            self._run(conn, "pg_advisory_unlock", sha256)
        except Exception:
            conn.invalidate()  # a connection still holding the lock must not go back to the pool
            raise


def locks_for(url: str) -> UploadLocks:
    """Advisory locks on PostgreSQL (several core processes), else this process's own."""
    return AdvisoryLocks(url) if url.startswith("postgresql") else LocalLocks()


def staging_for(store: ObjectStore, folder: Path) -> Staging:
    """In the object store when it is S3 (shared by every core process), else `folder`."""
    from edge2core.common.objectstore import S3ObjectStore

    if isinstance(store, S3ObjectStore):
        return ObjectStaging(store, folder)
    return FolderStaging(folder)
