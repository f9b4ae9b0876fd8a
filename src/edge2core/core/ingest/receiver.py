"""The core's side of the claim check: take a photo's bytes, verify them, store them once.

The hash in the URL is the photo's id; the core recomputes it while streaming and refuses a
mismatch, so a confirmation means "these exact bytes are durable here". On arrival the core
re-checks privacy (refusals are quarantined with their reason, without the bytes), computes its
own perceptual hash for near-duplicate grouping, records the photo's metadata and, for a
shopper photo, puts it in the labelling queue. Resumable uploads (`core.uploads`) end here too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import Engine, bindparam, insert, null, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import PhotoRecord, Source, as_utc, utcnow
from edge2core.common.identifiers import IdKind, InvalidIdentifier, check, check_optional
from edge2core.common.images import (
    ImageRejected,
    RejectReason,
    dhash,
    metadata_found,
    sniff_format,
)
from edge2core.common.objectstore import ObjectStore, image_key
from edge2core.core.db.schema import ImageRow, LabelTaskRow, QuarantineRow, TombstoneRow

# Bodies up to this size are kept in memory rather than staged in a file: prepared photos are
# a few hundred KB; larger one-shot uploads (up to `max_upload_bytes`) stream to a staging file.
IN_MEMORY_MAX = 8 * 1024 * 1024

# `_record`'s answer for a photo erased between its upload's replay check and its commit.
ERASED = "erased"

# The photo's row, else a row of NULLs if it was erased, else nothing: one round trip.
_IMAGE_OR_TOMBSTONE = union_all(
    select(ImageRow.key, ImageRow.size).where(ImageRow.sha256 == bindparam("sha")),
    select(null().label("key"), null().label("size")).where(
        TombstoneRow.sha256 == bindparam("sha")),
)
_PRESENT = select(ImageRow.sha256).where(ImageRow.sha256.in_(bindparam("shas", expanding=True)))
_ERASED = select(TombstoneRow.sha256).where(
    TombstoneRow.sha256.in_(bindparam("shas", expanding=True)))

# Refusals that say something is wrong with the photo itself (kept in quarantine with the reason),
# as opposed to transport problems (hash or size mismatch) that a resend fixes.
QUARANTINED = frozenset(
    {"metadata_present", "not_an_image", "unsupported_format", "corrupt", "empty"}
)


class UploadError(ValueError):
    """The upload cannot be accepted; `status` is the HTTP status to answer with."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Receipt:
    sha256: str
    key: str
    size: int
    created: bool
    erased: bool = False  # the photo was erased at the core: acknowledged, never stored again


def check_ids(record: PhotoRecord) -> None:
    """Every id in a photo record follows the identifiers rule (`common.identifiers`) before
    the core keeps it: site, device, request id, the SKU (it becomes a label, a class, a file
    name in exports) and the edge's guesses (a person may confirm one as the label). Refused
    with 422 `invalid_id`; the edge quarantines the photo with the reason."""
    try:
        check(IdKind.SITE, record.site)
        check(IdKind.DEVICE, record.device)
        check_optional(IdKind.SKU, record.sku)
        check_optional(IdKind.REQUEST_ID, record.request_id)
        for guess in record.top_guesses:
            check(IdKind.SKU, guess.sku)
    except InvalidIdentifier as exc:
        raise UploadError(422, exc.reason, str(exc)) from exc


def stable_split(sha256: str, val_percent: int) -> str:
    """A photo's split depends on its id only, so it never moves between dataset versions."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def photo_dhash(data: bytes) -> int:
    """The core's own 64-bit dHash of a stored photo (decoded at 1/8 scale where JPEG allows)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (64, 64))
            return dhash(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(422, RejectReason.CORRUPT.value, f"cannot decode the photo: {exc}") from exc


def featureless(phash: int) -> bool:
    """A flat or evenly graded photo hashes to (nearly) all zeros or ones: it has no features to
    call it a near-duplicate of anything, so it is not grouped."""
    return phash.bit_count() <= 4 or phash.bit_count() >= 60


class NearDupIndex:
    """Perceptual hashes of stored photos, for assigning a new photo to a near-duplicate group.

    A photo within `bits` (Hamming distance) of a stored photo joins that photo's group (the
    earliest such photo on ties), else starts its own group. A group's split is the split of its
    first photo, so near-duplicates land on the same side and nobody's split ever moves.
    Loaded from the database on first use; `invalidate()` after deletions.
    """

    def __init__(self, sessions: sessionmaker[Session], bits: int) -> None:
        self.sessions = sessions
        self.bits = bits
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._groups: list[str] = []
        self._count = 0
        self._loaded = False
        self.lock = threading.Lock()

    def invalidate(self) -> None:
        with self.lock:
            self._loaded = False

    def invalidate_locked(self) -> None:
        self._loaded = False

    def _load(self) -> None:
        stmt = (
            select(ImageRow.phash, ImageRow.dup_group)
            .where(ImageRow.phash.is_not(None))
            .order_by(ImageRow.stored_at, ImageRow.sha256)
        )
        with self.sessions() as session:
            rows = [(int(h, 16), g) for h, g in session.execute(stmt) if not featureless(int(h, 16))]
        self._hashes = np.array([h for h, _ in rows], dtype=np.uint64)
        self._groups = [g for _, g in rows]
        self._count = len(rows)
        self._loaded = True

    def group_for(self, sha256: str, phash: int | None) -> str:
        """Call with `lock` held, and `add` the photo before releasing it."""
        if not self._loaded:
            self._load()
        if phash is None or featureless(phash) or self.bits <= 0 or self._count == 0:
            return sha256
        distances = np.bitwise_count(self._hashes[: self._count] ^ np.uint64(phash))
        nearest = int(np.argmin(distances))  # the first (earliest) of the nearest
        return self._groups[nearest] if int(distances[nearest]) <= self.bits else sha256

    def add(self, phash: int | None, group: str) -> None:
        if phash is None or featureless(phash) or not self._loaded:
            return
        if self._count == len(self._hashes):
            grown = np.zeros(max(1024, 2 * len(self._hashes)), dtype=np.uint64)
            grown[: self._count] = self._hashes[: self._count]
            self._hashes = grown
        self._hashes[self._count] = np.uint64(phash)
        self._groups.append(group)
        self._count += 1


class ImageReceiver:
    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        *,
        max_bytes: int,
        val_percent: int,
        near_dup_bits: int = 4,
        upload_expiry_s: float = 24 * 3600,
        io_threads: int = 32,
    ) -> None:
        from edge2core.core.ingest.uploads import ResumableUploads

        self.store = store
        self.sessions = sessions
        self._engine = sessions.kw["bind"]
        self._wal = WalCommits.for_engine(self._engine)  # None unless SQLite in WAL mode
        self.max_bytes = max_bytes
        self._val_percent = val_percent
        self.near_dups = NearDupIndex(sessions, near_dup_bits)
        # Blocking work (fsync, hashing, the database) runs here: uploads spend most of their
        # time waiting on the disk, so this pool is wider than asyncio's default.
        self.io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="e2c-receiver")
        self._writer = GroupCommit(self._commit)
        self.uploads = ResumableUploads(self, expiry_s=upload_expiry_s)
        # Told of every newly stored photo (the learning loop wakes on arrivals); must be quick.
        self.on_stored: Callable[[PhotoRecord], None] = lambda _record: None

    # --- lookups -----------------------------------------------------------------------------

    def existing(self, sha256: str) -> Receipt | None:
        # Plain SQL on a pooled connection (no ORM session): this runs once per upload.
        with self._engine.connect() as conn:
            row = conn.execute(_IMAGE_OR_TOMBSTONE, {"sha": sha256}).first()
        if row is not None and row.key is None:  # only a tombstone
            return Receipt(sha256=sha256, key="", size=0, created=False, erased=True)
        if row is None or not self.store.exists(row.key):
            return None
        if self._wal is not None:
            # The row may be another upload's, committed but not yet fsync'd: a replay is
            # acknowledged only once that row is on disk too.
            self._wal.sync(self._wal.latest())
        return Receipt(sha256=sha256, key=row.key, size=row.size, created=False)

    # --- one-shot upload (PUT /v1/images/<sha256>) -------------------------------------------

    async def receive(self, record: PhotoRecord, body: AsyncIterable[bytes]) -> Receipt:
        check_ids(record)  # before a byte is read
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
                raise UploadError(413, "too_large", f"over {self.max_bytes} bytes")
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
                        raise UploadError(413, "too_large", f"over {self.max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                # No fsync here: `put_file` fsyncs the file once, before it moves into place,
                # and nothing is acknowledged before that.
            self.verify(record, digest.hexdigest(), size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def verify(record: PhotoRecord, actual: str, size: int) -> None:
        if actual != record.sha256:
            raise UploadError(
                422, "hash_mismatch", f"body hashes to {actual}, not {record.sha256}; resend"
            )
        if size != record.size:
            raise UploadError(422, "size_mismatch", f"body has {size} bytes, not {record.size}")

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
            try:
                check_ids(record)
                self.check_privacy(data)
                phash = photo_dhash(data)
            except UploadError as exc:
                if exc.code in QUARANTINED:
                    self._quarantine(record, exc)
                raise
        except BaseException:
            refused()
            raise
        key = image_key(record.sha256)
        # The row goes to the group commit now; this thread writes the object meanwhile (its
        # own fsyncs), then waits for the row. Whichever waiting thread finds no commit under
        # way commits every queued row, so commits and object writes overlap.
        pending = self._writer.enqueue((record, key, phash))
        try:
            put(key)
        except BaseException:
            try:
                outcome = self._settled(pending)
            except BaseException:  # noqa: BLE001 (the object write's failure is the one reported)
                outcome = None
            if outcome is True:
                self._unrecord(record.sha256)
            failed()
            raise
        try:
            created = self._settled(pending)  # False if a lost object came back
        except BaseException:
            failed()
            raise
        if created is ERASED:  # erased while it was on its way: acknowledged, not kept
            self.store.delete(key)
            return Receipt(sha256=record.sha256, key="", size=0, created=False, erased=True)
        self.on_stored(record)
        return Receipt(sha256=record.sha256, key=key, size=record.size, created=True)

    def _unrecord(self, sha256: str) -> None:
        with self.near_dups.lock, self.sessions.begin() as session:
            for row_type in (LabelTaskRow, ImageRow):
                if (row := session.get(row_type, sha256)) is not None:
                    session.delete(row)
            self.near_dups.invalidate_locked()

    @staticmethod
    def check_privacy(data: bytes) -> None:
        try:
            sniff_format(data)
        except ImageRejected as exc:
            raise UploadError(415, exc.reason.value, exc.detail) from exc
        try:
            found = metadata_found(data)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UploadError(422, RejectReason.CORRUPT.value, f"cannot read the photo: {exc}") from exc
        if found:
            raise UploadError(
                422,
                RejectReason.METADATA_PRESENT.value,
                f"metadata must be stripped at the edge; found {', '.join(found)}",
            )

    def _quarantine(self, record: PhotoRecord, exc: UploadError) -> None:
        now = utcnow()
        with self.sessions.begin() as session:
            row = session.get(QuarantineRow, record.sha256)
            if row is None:
                session.add(
                    QuarantineRow(
                        sha256=record.sha256,
                        site=record.site,
                        device=record.device,
                        reason=exc.code,
                        detail=exc.detail[:1000],
                        record=record.model_dump(mode="json"),
                        attempts=1,
                        first_at=now,
                        last_at=now,
                    )
                )
            else:
                row.attempts += 1
                row.last_at = now
                row.reason, row.detail = exc.code, exc.detail[:1000]

    def _settled(self, pending: _Slot) -> bool | str:
        """Wait for a row handed to the group commit; durable when this returns."""
        outcome, seq = self._writer.wait(pending)  # type: ignore[misc]
        if seq and self._wal is not None:
            self._wal.sync(seq)
        return outcome

    def _record(self, record: PhotoRecord, key: str, phash: int) -> bool | str:
        """Insert the photo's row (and its labelling task); False if it was already there,
        `ERASED` if the photo was erased since the upload's replay check.

        Group commit: concurrent uploads hand their rows to whichever thread is committing,
        which writes them all in one transaction, then wakes them. The answer to each upload
        still waits for its own row to be durable (`_settled`).
        """
        return self._settled(self._writer.enqueue((record, key, phash)))

    def _commit(self, batch: list[tuple[PhotoRecord, str, int]]) -> list[tuple[bool | str, int]]:
        """Per item: (outcome, seq); seq > 0 is the `WalCommits` commit to sync before
        acknowledging it."""
        now = utcnow()
        with self.near_dups.lock:
            shas = [r.sha256 for r, _k, _p in batch]
            with self._engine.connect() as conn:
                present = set(conn.scalars(_PRESENT, {"shas": shas}))
                # Erased meanwhile (between the upload's replay check and now): never stored.
                erased = set(conn.scalars(_ERASED, {"shas": shas}))
            raise_for = erased - present
            results: list[bool | str] = []
            rows: list[dict] = []
            tasks: list[LabelTaskRow] = []
            for record, key, phash in batch:
                if record.sha256 in raise_for:
                    results.append(ERASED)
                    continue
                if record.sha256 in present:
                    results.append(False)
                    continue
                present.add(record.sha256)
                group = self.near_dups.group_for(record.sha256, phash)
                rows.append(self._row_values(record, key, phash, group, now))
                if record.source is Source.SHOPPER:
                    tasks.append(_label_task(record, now))
                self.near_dups.add(phash, group)  # later photos in this batch can join it
                results.append(True)
            if not rows:
                # Present rows may be another batch's, committed but not yet synced.
                latest = self._wal.latest() if self._wal is not None else 0
                return [(r, latest if r is False else 0) for r in results]
            try:
                # One multi-row INSERT (no ORM unit of work per row), one commit.
                seq = self._insert_batch(rows, tasks)
            except IntegrityError:
                # Another process recorded one of them first: fall back to one at a time.
                self.near_dups.invalidate_locked()
                results = []
                for record, key, phash in batch:
                    if record.sha256 in raise_for:
                        results.append(ERASED)
                    else:
                        results.append(self._insert_one(record, key, phash, now))
                seq = 0  # committed with synchronous=FULL
        return [(r, seq) for r in results]

    def _insert_batch(self, rows: list[dict], tasks: list[LabelTaskRow]) -> int:
        """One multi-row INSERT (no ORM unit of work per row), one commit; its WAL sequence
        number (0 when committed with synchronous=FULL)."""
        if self._wal is None:
            with self.sessions.begin() as session:
                session.execute(insert(ImageRow.__table__), rows)
                session.add_all(tasks)
            return 0
        with self._wal.committing() as commit:
            with self._wal.sessions.begin() as session:
                session.execute(insert(ImageRow.__table__), rows)
                session.add_all(tasks)
        return commit.seq

    def _insert_one(self, record: PhotoRecord, key: str, phash: int, now) -> bool:  # type: ignore[no-untyped-def]
        group = self.near_dups.group_for(record.sha256, phash)
        try:
            with self.sessions.begin() as session:
                if session.get(ImageRow, record.sha256) is not None:
                    return False
                session.add(ImageRow(**self._row_values(record, key, phash, group, now)))
                if record.source is Source.SHOPPER:
                    session.add(_label_task(record, now))
        except IntegrityError:
            return False
        self.near_dups.add(phash, group)
        return True

    def _row_values(self, record: PhotoRecord, key: str, phash: int, group: str, now) -> dict:  # type: ignore[no-untyped-def]
        labelled = record.source is Source.KIOSK and record.sku is not None
        quality = record.quality or None
        sharpness = quality.get("sharpness") if isinstance(quality, dict) else None
        return {
            "sha256": record.sha256,
            "key": key,
            "size": record.size,
            "width": record.width,
            "height": record.height,
            "site": record.site,
            "device": record.device,
            "source": record.source.value,
            "sku": record.sku,
            "captured_at": as_utc(record.captured_at),
            "received_at": as_utc(record.received_at),
            "stored_at": now,
            "edge_model_version": record.edge_model_version,
            "confidence": record.confidence,
            "top_guesses": [g.model_dump() for g in record.top_guesses],
            "split": stable_split(group, self._val_percent),
            "label_origin": "scan" if labelled else None,
            "phash": f"{phash:016x}",
            "dup_group": group,
            "redaction": record.redaction,
            "quality": quality,
            "sharpness": float(sharpness) if isinstance(sharpness, int | float) else None,
        }


class _Commit:
    seq = 0


class WalCommits:
    """The receiver's batch commits on SQLite in WAL mode, made durable outside the write lock.

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
        from edge2core.core.db.engine import make_engine, make_sessionmaker

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


class GroupCommit:
    """Leader/follower batching: the first caller commits everything queued meanwhile."""

    def __init__(self, commit) -> None:  # type: ignore[no-untyped-def]
        self._commit = commit
        self._mutex = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False

    def enqueue(self, item: object) -> _Slot:
        slot = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
        return slot

    def wait(self, slot: _Slot) -> object:
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
        return slot.result

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
            except BaseException as exc:  # noqa: BLE001 (handed to every waiter)
                for s in batch:
                    s.error = exc
            for s in batch:
                s.done.set()


class _Slot:
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: object) -> None:
        self.item = item
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def _label_task(record: PhotoRecord, now) -> LabelTaskRow:  # type: ignore[no-untyped-def]
    top = max(record.top_guesses, key=lambda g: g.confidence, default=None)
    return LabelTaskRow(
        sha256=record.sha256,
        site=record.site,
        status="pending",
        reason="low_confidence" if top is not None else "unrecognised",
        top_sku=top.sku if top else None,
        top_confidence=top.confidence if top else record.confidence,
        created_at=now,
    )
