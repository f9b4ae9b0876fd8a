"""The audit log: what changed, when, to what (catalogue changes, model promotions, ...).

    audit = AuditLog(sessions)
    audit.record("model.promoted", "7", stage="production", by="ana")
    audit.query(kind_prefix="catalogue.", subject="SKU-0007", limit=20)   # newest first

`kind` is a dotted name, `<area>.<what happened>` (e.g. "catalogue.retired"); `subject` is
what it happened to (a SKU, a model version); `detail` is any JSON-able keyword arguments.
Writers that change other tables call `record_in(session, ...)` inside their own
transaction, so the entry commits (or not) with the change it describes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import as_utc, utcnow
from edge2core.core.db.schema import AuditRow

MAX_LIMIT = 1000


class AuditEvent(BaseModel):
    id: int
    at: datetime
    kind: str
    subject: str
    detail: dict[str, Any]



def _event(row: AuditRow) -> AuditEvent:
    return AuditEvent(id=row.id, at=as_utc(row.at), kind=row.kind, subject=row.subject,
                      detail=row.detail or {})


def _check(kind: str, subject: str) -> None:
    if not kind or len(kind) > 64:
        raise ValueError(f"an audit kind is 1-64 characters, got {kind!r}")
    if len(subject) > 200:
        raise ValueError(f"an audit subject is at most 200 characters, got {len(subject)}")


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, kind: str, subject: str, **detail: Any) -> AuditEvent:
        """Record one event in its own transaction; returns it with its id."""
        with self._sessions.begin() as session:
            row = self.record_in(session, kind, subject, **detail)
            session.flush()
            return _event(row)

    @staticmethod
    def record_in(session: Session, kind: str, subject: str, **detail: Any) -> AuditRow:
        """Add an event to `session`'s transaction (it commits with the caller's change)."""
        _check(kind, subject)
        row = AuditRow(at=utcnow(), kind=kind, subject=subject, detail=_jsonable(detail))
        session.add(row)
        return row

    def query(
        self,
        kind_prefix: str | None = None,
        subject: str | None = None,
        *,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Newest first. `kind_prefix` matches the start of the kind ("catalogue." for all
        catalogue events); `since` keeps events at or after that time."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        stmt = select(AuditRow)
        if kind_prefix:
            escaped = kind_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(AuditRow.kind.like(f"{escaped}%", escape="\\"))
        if subject is not None:
            stmt = stmt.where(AuditRow.subject == subject)
        if since is not None:
            stmt = stmt.where(AuditRow.at >= as_utc(since))
        with self._sessions() as session:
            rows = session.scalars(stmt.order_by(AuditRow.id.desc()).limit(limit)).all()
        return [_event(r) for r in rows]


def _jsonable(value: Any) -> Any:
    """Detail values as JSON: datetimes as ISO 8601, enums and other objects as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)
