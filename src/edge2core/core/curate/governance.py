"""Data governance: erasure (right to erasure) and retention rules per source.

`erase` deletes every photo that matches (by site, device, source, capture-time range, arrival
time or ids): the objects first, then the rows (photo, labelling task, quarantine record), and
any unfinished upload from that device. An erased photo's id is kept as a tombstone (a hash,
not the photo), so a copy still waiting in some edge spool is acknowledged but never stored
again. Erasure is idempotent: running the same request again finishes one that was cut short.

Dataset manifests are immutable and content-addressed, so versions built before an erasure
still list the erased ids; their bytes are gone (reading them raises `ObjectNotFound`, exports
skip and count them), and every later version leaves them out because the rows are gone.

`apply_retention` erases, for each source with a rule, photos that arrived more than N days ago
(no tombstones: nothing will resend them).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, StringConstraints, model_validator
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import SHA256_PATTERN, Source, as_utc, utcnow
from edge2core.common.identifiers import Identifier
from edge2core.common.objectstore import ObjectStore
from edge2core.core.db.schema import (
    ErasureRow,
    ImageRow,
    LabelTaskRow,
    QuarantineRow,
    TombstoneRow,
)
from edge2core.core.jsontypes import UtcDateTime

if TYPE_CHECKING:
    from edge2core.core.ingest.uploads import ResumableUploads

BATCH = 500


class EraseRequest(BaseModel):
    site: Identifier | None = None
    device: Identifier | None = None
    source: Source | None = None
    since: UtcDateTime | None = Field(default=None, description="captured at or after")
    until: UtcDateTime | None = Field(default=None, description="captured before")
    received_before: UtcDateTime | None = Field(default=None, description="arrived before")
    sha256s: list[Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]] | None = Field(
        default=None, max_length=100_000, description="these photos")
    reason: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _some_criterion(self) -> EraseRequest:
        if not any(v is not None for v in (self.site, self.device, self.source, self.since,
                                           self.until, self.received_before, self.sha256s)):
            raise ValueError("name what to erase: site, device, source, a time range or ids")
        return self

    def criteria(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True, exclude={"reason"})


class ErasureReport(BaseModel):
    id: int
    kind: str
    criteria: dict
    reason: str
    images: int
    uploads_discarded: int = 0
    started_at: UtcDateTime
    finished_at: UtcDateTime | None


class Governance:
    def __init__(
        self,
        store: ObjectStore,
        sessions: sessionmaker[Session],
        *,
        retention_days: dict[str, int] | None = None,
        uploads: ResumableUploads | None = None,
        on_erased: Callable[[list[str]], object] = lambda _ids: None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self.retention_days = dict(retention_days or {})
        self._uploads = uploads  # partial (resumable) uploads
        self._on_erased = on_erased

    def erase(self, request: EraseRequest, *, kind: str = "erasure") -> ErasureReport:
        with self._sessions.begin() as session:
            log = ErasureRow(kind=kind, criteria=request.criteria(), reason=request.reason,
                             images=0, started_at=utcnow())
            session.add(log)
            session.flush()
            log_id = log.id
        erased: list[str] = []
        while batch := self._next_batch(request):
            for _sha, key in batch:
                self._store.delete(key)  # objects first: a rerun finds the rows and finishes
            shas = [sha for sha, _key in batch]
            with self._sessions.begin() as session:
                session.execute(delete(LabelTaskRow).where(LabelTaskRow.sha256.in_(shas)))
                session.execute(delete(QuarantineRow).where(QuarantineRow.sha256.in_(shas)))
                session.execute(delete(ImageRow).where(ImageRow.sha256.in_(shas)))
                if kind == "erasure":
                    known = set(session.scalars(
                        select(TombstoneRow.sha256).where(TombstoneRow.sha256.in_(shas))))
                    now = utcnow()
                    session.add_all(TombstoneRow(sha256=s, erasure_id=log_id, erased_at=now)
                                    for s in shas if s not in known)
            erased += shas
        quarantined = self._erase_quarantine(request)
        discarded = self._discard_uploads(request)
        with self._sessions.begin() as session:
            finished = session.get(ErasureRow, log_id)
            assert finished is not None
            finished.images = len(erased)
            finished.finished_at = utcnow()
            report = _report(finished)
        if erased or quarantined:
            self._on_erased(erased)
        report.uploads_discarded = discarded
        return report

    def apply_retention(self, now: datetime | None = None) -> list[ErasureReport]:
        now = now or utcnow()
        reports = []
        for source, days in sorted(self.retention_days.items()):
            request = EraseRequest(source=Source(source), received_before=now - timedelta(days=days),
                                   reason=f"retention: {source} photos are kept {days} days")
            reports.append(self.erase(request, kind="retention"))
        if self._uploads is not None:
            self._uploads.purge_expired(now)
        return reports

    def history(self, limit: int = 100) -> list[ErasureReport]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ErasureRow).order_by(ErasureRow.id.desc()).limit(limit)).all()
        return [_report(r) for r in rows]

    def _where(
        self, request: EraseRequest, table: type[ImageRow] | type[QuarantineRow] = ImageRow,
    ) -> list:
        c = table
        clauses = []
        if request.site is not None:
            clauses.append(c.site == request.site)
        if request.device is not None:
            clauses.append(c.device == request.device)
        if table is ImageRow:
            if request.source is not None:
                clauses.append(ImageRow.source == request.source.value)
            when = func.coalesce(ImageRow.captured_at, ImageRow.received_at)
            if request.since is not None:
                clauses.append(when >= as_utc(request.since))
            if request.until is not None:
                clauses.append(when < as_utc(request.until))
            if request.received_before is not None:
                clauses.append(ImageRow.received_at < as_utc(request.received_before))
        if request.sha256s is not None:
            clauses.append(c.sha256.in_(request.sha256s))
        return clauses

    def _next_batch(self, request: EraseRequest) -> list[tuple[str, str]]:
        stmt = (select(ImageRow.sha256, ImageRow.key).where(*self._where(request))
                .order_by(ImageRow.sha256).limit(BATCH))
        with self._sessions() as session:
            return [(sha, key) for sha, key in session.execute(stmt)]

    def _erase_quarantine(self, request: EraseRequest) -> int:
        """Quarantine records carry the refused photo's metadata; they go with the device."""
        if request.source is not None or request.since or request.until or request.received_before:
            return 0  # the quarantine keeps no capture times or sources to match on
        with self._sessions.begin() as session:
            result = session.execute(
                delete(QuarantineRow).where(*self._where(request, QuarantineRow)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _discard_uploads(self, request: EraseRequest) -> int:
        if self._uploads is None:
            return 0
        discarded = 0
        for state in self._uploads.in_progress():
            r = state.record
            when = as_utc(r.captured_at or r.received_at)
            if (
                (request.site is None or r.site == request.site)
                and (request.device is None or r.device == request.device)
                and (request.source is None or r.source == request.source)
                and (request.since is None or when >= as_utc(request.since))
                and (request.until is None or when < as_utc(request.until))
                and (request.received_before is None
                     or as_utc(r.received_at) < as_utc(request.received_before))
                and (request.sha256s is None or r.sha256 in request.sha256s)
            ):
                discarded += self._uploads.discard(r.sha256)
        return discarded


def _report(row: ErasureRow) -> ErasureReport:
    return ErasureReport(
        id=row.id, kind=row.kind, criteria=row.criteria, reason=row.reason, images=row.images,
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
    )
