"""A photo's rows in the core's database: recorded once, durably, in group commits.

Concurrent uploads hand their rows to whichever thread is committing, which writes them all in
one transaction (one multi-row INSERT), then wakes them; each upload is still answered only
once its own row is durable (`settled`). The row carries the photo's near-duplicate group and
its split, decided here under the near-duplicate index's lock. A shopper photo also gets a
labelling task. Refused photos are quarantined (a row with the reason, without the bytes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CompoundSelect, Table, bindparam, insert, null, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.errors import DomainError
from edge2core.common.events import PhotoRecord, Source, as_utc, utcnow
from edge2core.core.db.schema import ImageRow, LabelTaskRow, QuarantineRow, TombstoneRow
from edge2core.core.ingest.commits import GroupCommit, Slot, WalCommits
from edge2core.core.ingest.near_dups import NearDupIndex, stable_split
from edge2core.core.ingest.sequence import EPOCH, SharedIndex, advance, bump_epoch

# `settled`'s answer for a photo erased between its upload's replay check and its commit.
ERASED = "erased"

# The photo's row, else a row of NULLs if it was erased, else nothing: one round trip.
_IMAGE_OR_TOMBSTONE: CompoundSelect[tuple[str | None, int | None]] = union_all(
    select(ImageRow.key, ImageRow.size).where(ImageRow.sha256 == bindparam("sha")),
    select(null().label("key"), null().label("size")).where(
        TombstoneRow.sha256 == bindparam("sha")),
)
_PRESENT = select(ImageRow.sha256).where(ImageRow.sha256.in_(bindparam("shas", expanding=True)))
_ERASED = select(TombstoneRow.sha256).where(
    TombstoneRow.sha256.in_(bindparam("shas", expanding=True)))

_IMAGES = cast(Table, ImageRow.__table__)

Pending = tuple[PhotoRecord, str, int]  # the record, its object key, its perceptual hash
Outcome = bool | str  # True: recorded now; False: it was there already; or ERASED
Committed = tuple[Outcome, int]  # and the `WalCommits` commit to sync first (0: none)


class PhotoRows:
    def __init__(self, sessions: sessionmaker[Session], *, val_percent: int,
                 near_dup_bits: int) -> None:
        self.sessions = sessions
        self._engine = sessions.kw["bind"]
        self._wal = WalCommits.for_engine(self._engine)  # None unless SQLite in WAL mode
        self._val_percent = val_percent
        # Several core processes (any server database): they take turns through the database
        # (`ingest.sequence`). SQLite is one process's: its index's lock is enough.
        self._shared = self._engine.dialect.name != "sqlite"
        self.near_dups = NearDupIndex(
            self._stored_hashes, near_dup_bits,
            on_invalidate=(lambda: bump_epoch(self.sessions)) if self._shared else None)
        self._shared_index = SharedIndex(self.near_dups)
        self._writer = GroupCommit[Pending, Committed](
            self._commit_shared if self._shared else self._commit)

    # --- lookups -----------------------------------------------------------------------------

    def find(self, sha256: str) -> tuple[str | None, int | None] | None:
        """(key, size) of the photo's row, (None, None) if it was erased, else None."""
        # Plain SQL on a pooled connection (no ORM session): this runs once per upload.
        with self._engine.connect() as conn:
            row = conn.execute(_IMAGE_OR_TOMBSTONE, {"sha": sha256}).first()
        return None if row is None else (row.key, row.size)

    def sync_visible(self) -> None:
        """Return once every row a reader may already see is durable (a row found by `find`
        may be another upload's, committed but not yet fsync'd)."""
        if self._wal is not None:
            self._wal.sync(self._wal.latest())

    def stored(self, sha256: str) -> tuple[PhotoRecord, datetime] | None:
        with self.sessions() as session:
            row = session.get(ImageRow, sha256)
        if row is None:
            return None
        record = PhotoRecord(
            site=row.site, device=row.device, source=row.source, sha256=sha256, size=row.size,
            width=row.width, height=row.height,
        )
        return record, row.stored_at

    def _stored_hashes(self) -> list[tuple[int, str]]:
        """(perceptual hash, group) of every stored photo, earliest first."""
        stmt = (
            select(ImageRow.phash, ImageRow.dup_group)
            .where(ImageRow.phash.is_not(None))
            .order_by(ImageRow.stored_at, ImageRow.sha256)
        )
        with self.sessions() as session:
            # `phash` and `dup_group` are set together (`_row_values`).
            return [(int(h, 16), g) for h, g in session.execute(stmt) if h is not None and g is not None]

    # --- recording ---------------------------------------------------------------------------

    def enqueue(self, record: PhotoRecord, key: str, phash: int) -> Slot[Pending, Committed]:
        """Hand the photo's row to the group commit; `settled` waits for it."""
        return self._writer.enqueue((record, key, phash))

    def settled(self, pending: Slot[Pending, Committed]) -> Outcome:
        """Wait for a row handed to the group commit; durable when this returns. False if it
        was already there, `ERASED` if the photo was erased since the upload's replay check."""
        outcome, seq = self._writer.wait(pending)
        if seq and self._wal is not None:
            self._wal.sync(seq)
        return outcome

    def unrecord(self, sha256: str) -> None:
        """Take back a row (and its labelling task) whose object could not be written."""
        with self.near_dups.lock, self.sessions.begin() as session:
            for row_type in (LabelTaskRow, ImageRow):
                if (row := session.get(row_type, sha256)) is not None:
                    session.delete(row)
            if self._shared:
                advance(session, EPOCH, 1)  # other processes drop it from their index too
            self.near_dups.invalidate_locked()

    def quarantine(self, record: PhotoRecord, exc: DomainError) -> None:
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

    def _commit(self, batch: list[Pending]) -> list[Committed]:
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
            results: list[Outcome] = []
            rows: list[dict[str, Any]] = []
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
                if record.source in (Source.SHOPPER, Source.CAMERA):  # unlabelled: to label
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

    def _commit_shared(self, batch: list[Pending]) -> list[Committed]:
        """`_commit` when several core processes record photos: in one transaction, take the
        recorders' turn and catch the index up (`SharedIndex.claim`), then check, group and
        insert; the database's unique key is the last word on duplicates (a conflict retries,
        and the retry finds the row present)."""
        for attempt in range(3):
            try:
                return self._commit_shared_once(batch)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _commit_shared_once(self, batch: list[Pending]) -> list[Committed]:
        shas = [r.sha256 for r, _k, _p in batch]
        with self.near_dups.lock:
            try:
                with self.sessions.begin() as session:
                    seq = self._shared_index.claim(session, len(batch))
                    now = utcnow()
                    present = set(session.scalars(_PRESENT, {"shas": shas}))
                    erased = set(session.scalars(_ERASED, {"shas": shas})) - present
                    results: list[Outcome] = []
                    rows: list[dict[str, Any]] = []
                    tasks: list[LabelTaskRow] = []
                    for record, key, phash in batch:
                        if record.sha256 in erased or record.sha256 in present:
                            results.append(ERASED if record.sha256 in erased else False)
                            continue
                        present.add(record.sha256)
                        group = self.near_dups.group_for(record.sha256, phash)
                        rows.append({**self._row_values(record, key, phash, group, now),
                                     "ingest_seq": seq + len(rows)})
                        if record.source in (Source.SHOPPER, Source.CAMERA):  # to label
                            tasks.append(_label_task(record, now))
                        self.near_dups.add(phash, group)
                        results.append(True)
                    if rows:
                        session.execute(insert(_IMAGES), rows)
                        session.add_all(tasks)
            except BaseException:
                self._shared_index.forget()
                raise
        return [(r, 0) for r in results]

    def _insert_batch(self, rows: list[dict[str, Any]], tasks: list[LabelTaskRow]) -> int:
        """One multi-row INSERT (no ORM unit of work per row), one commit; its WAL sequence
        number (0 when committed with synchronous=FULL)."""
        if self._wal is None:
            with self.sessions.begin() as session:
                session.execute(insert(_IMAGES), rows)
                session.add_all(tasks)
            return 0
        with self._wal.committing() as commit, self._wal.sessions.begin() as session:
            session.execute(insert(_IMAGES), rows)
            session.add_all(tasks)
        return commit.seq

    def _insert_one(self, record: PhotoRecord, key: str, phash: int, now: datetime) -> bool:
        group = self.near_dups.group_for(record.sha256, phash)
        try:
            with self.sessions.begin() as session:
                if session.get(ImageRow, record.sha256) is not None:
                    return False
                session.add(ImageRow(**self._row_values(record, key, phash, group, now)))
                if record.source in (Source.SHOPPER, Source.CAMERA):  # unlabelled: to label
                    session.add(_label_task(record, now))
        except IntegrityError:
            return False
        self.near_dups.add(phash, group)
        return True

    def _row_values(self, record: PhotoRecord, key: str, phash: int, group: str,
                    now: datetime) -> dict[str, Any]:
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


def _label_task(record: PhotoRecord, now: datetime) -> LabelTaskRow:
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
