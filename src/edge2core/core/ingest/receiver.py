"""The core's side of the claim check: take a photo's bytes, verify them, store them once.

The hash in the URL is the photo's id; the core recomputes it while streaming and refuses a
mismatch, so a confirmation means "these exact bytes are durable here". On arrival the core
re-checks privacy (refusals are quarantined with their reason, without the bytes), computes its
own perceptual hash for near-duplicate grouping, records the photo's metadata and, for a
shopper photo, puts it in the labelling queue. Resumable uploads (`ingest.uploads`) end here
too, through `accept`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.errors import DomainError
from edge2core.common.events import PhotoRecord
from edge2core.common.objectstore import ObjectStore, image_key
from edge2core.core.ingest import checks
from edge2core.core.ingest.accepting import Receipt
from edge2core.core.ingest.errors import UploadTooLarge
from edge2core.core.ingest.near_dups import photo_dhash
from edge2core.core.ingest.rows import ERASED, PhotoRows

# Bodies up to this size are kept in memory rather than staged in a file: prepared photos are
# a few hundred KB; larger one-shot uploads (up to `max_upload_bytes`) stream to a staging file.
IN_MEMORY_MAX = 8 * 1024 * 1024


class ImageReceiver:
    """Implements `ingest.accepting.Accepting` for the resumable uploads."""

    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        *,
        max_bytes: int,
        val_percent: int,
        near_dup_bits: int = 4,
        io_threads: int = 32,
        on_stored: Callable[[PhotoRecord], None] = lambda _record: None,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.rows = PhotoRows(sessions, val_percent=val_percent, near_dup_bits=near_dup_bits)
        self.near_dups = self.rows.near_dups  # invalidated after erasures
        # Blocking work (fsync, hashing, the database) runs here: uploads spend most of their
        # time waiting on the disk, so this pool is wider than asyncio's default.
        self.io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="e2c-receiver")
        # Told of every newly stored photo (the learning loop wakes on arrivals); must be quick.
        self._on_stored = on_stored

    # --- lookups and checks ------------------------------------------------------------------

    def existing(self, sha256: str) -> Receipt | None:
        """The receipt of a photo already stored (or erased), else None. Blocking."""
        found = self.rows.find(sha256)
        if found is None:
            return None
        key, size = found
        if key is None:  # only a tombstone
            return Receipt(sha256=sha256, key="", size=0, created=False, erased=True)
        if not self.store.exists(key):
            return None
        # The row may be another upload's, committed but not yet fsync'd: a replay is
        # acknowledged only once that row is on disk too.
        self.rows.sync_visible()
        return Receipt(sha256=sha256, key=key, size=size or 0, created=False)

    def stored_record(self, sha256: str) -> tuple[PhotoRecord, datetime] | None:
        return self.rows.stored(sha256)

    check_ids = staticmethod(checks.check_ids)
    verify = staticmethod(checks.verify)

    # --- one-shot upload (PUT /v1/images/<sha256>) -------------------------------------------

    async def receive(self, record: PhotoRecord, body: AsyncIterable[bytes]) -> Receipt:
        self.check_ids(record)  # before a byte is read
        loop = asyncio.get_running_loop()
        if record.size <= IN_MEMORY_MAX:
            # A photo-sized body is hashed as it arrives and kept in memory; everything else
            # (replay check, verification, privacy, perceptual hash, store, record) happens in
            # one hop to a worker thread, from those bytes, without a staging file.
            data, actual, size = await self._read(body, record.size)
            return await loop.run_in_executor(
                self.io, self._receive_bytes, record, data, actual, size)
        if (done := await loop.run_in_executor(self.io, self.existing, record.sha256)) is not None:
            return done  # a replay (or an erased photo): acknowledged, not stored twice
        staged = await self._stage(record, body)
        return await loop.run_in_executor(self.io, self.accept, record, staged)

    async def _read(self, body: AsyncIterable[bytes], declared: int) -> tuple[bytes, str, int]:
        """The body in memory, its sha256 and its size. Bytes beyond the declared size are
        hashed and counted (the upload fails verification) but not kept."""
        digest = hashlib.sha256()
        parts: list[bytes] = []
        size = 0
        async for chunk in body:
            size += len(chunk)
            if size > self.max_bytes:
                raise UploadTooLarge(f"over {self.max_bytes} bytes")
            digest.update(chunk)
            if size <= declared:
                parts.append(chunk)
        return b"".join(parts), digest.hexdigest(), size

    def _receive_bytes(self, record: PhotoRecord, data: bytes, actual: str, size: int) -> Receipt:
        if (done := self.existing(record.sha256)) is not None:
            return done  # a replay (or an erased photo): acknowledged, not stored twice
        self.verify(record, actual, size)
        return self.accept_bytes(record, data)

    async def _stage(self, record: PhotoRecord, body: AsyncIterable[bytes]) -> Path:
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.store.staging_dir(), prefix=".up-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadTooLarge(f"over {self.max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                # No fsync here: `put_file` fsyncs the file once, before it moves into place,
                # and nothing is acknowledged before that.
            self.verify(record, digest.hexdigest(), size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # --- the common end of both upload paths -------------------------------------------------

    def accept(self, record: PhotoRecord, staged: Path, *, keep_on_failure: bool = False) -> Receipt:
        """Blocking: privacy re-check, perceptual hash, store the verified file, record it.

        `staged` holds exactly the bytes named by `record.sha256` (already verified). It is
        gone when this returns or refuses the photo; on any other failure (the object store is
        down) it is removed too, unless `keep_on_failure` (resumable uploads retry).
        """
        try:
            data = staged.read_bytes()
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

        def cleanup() -> None:
            if not keep_on_failure:
                staged.unlink(missing_ok=True)

        return self._accept(record, data, lambda key: self.store.put_file(key, staged),
                            refused=lambda: staged.unlink(missing_ok=True), failed=cleanup)

    def accept_bytes(self, record: PhotoRecord, data: bytes) -> Receipt:
        """Blocking: as `accept`, for verified bytes in memory (stored with `put`)."""
        return self._accept(record, data, lambda key: self.store.put(key, data))

    def accept_placed(self, record: PhotoRecord, data: bytes, place: Callable[[str], None], *,
                      refused: Callable[[], None]) -> Receipt:
        """Blocking: as `accept_bytes`, for verified bytes already in the object store
        elsewhere; `place(key)` puts them at `key` inside the store (a server-side copy, see
        `ingest.direct`), `refused()` runs if the photo is refused."""
        return self._accept(record, data, place, refused=refused)

    def _accept(
        self,
        record: PhotoRecord,
        data: bytes,
        put: Callable[[str], None],
        *,
        refused: Callable[[], None] = lambda: None,
        failed: Callable[[], None] = lambda: None,
    ) -> Receipt:
        """The object write and the row's commit are each durable before this returns, and run
        side by side (each waits on its own fsync); if the object write fails, a row made here
        is taken back."""
        try:
            phash = self._judge(record, data)
        except BaseException:
            refused()
            raise
        key = image_key(record.sha256)
        # The row goes to the group commit now; this thread writes the object meanwhile (its
        # own fsyncs), then waits for the row. Whichever waiting thread finds no commit under
        # way commits every queued row, so commits and object writes overlap.
        pending = self.rows.enqueue(record, key, phash)
        try:
            put(key)
        except BaseException:
            try:
                outcome = self.rows.settled(pending)
            except BaseException:  # the object write's failure is the one reported
                outcome = None
            if outcome is True:
                self.rows.unrecord(record.sha256)
            failed()
            raise
        try:
            created = self.rows.settled(pending)  # False if a lost object came back
        except BaseException:
            failed()
            raise
        if created == ERASED:  # erased while it was on its way: acknowledged, not kept
            self.store.delete(key)
            return Receipt(sha256=record.sha256, key="", size=0, created=False, erased=True)
        self._on_stored(record)
        return Receipt(sha256=record.sha256, key=key, size=record.size, created=True)

    def _judge(self, record: PhotoRecord, data: bytes) -> int:
        """The checks on the photo itself, and its perceptual hash; a refusal that says
        something is wrong with the photo is quarantined."""
        try:
            self.check_ids(record)
            checks.check_privacy(data)
            return photo_dhash(data)
        except DomainError as exc:
            if exc.code in checks.QUARANTINED:
                self.rows.quarantine(record, exc)
            raise
