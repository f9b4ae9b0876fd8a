"""Data governance: erasures (by site, device, time, ids), the retention rules applied now,
the erasure history, and the photos the core refused and keeps in quarantine (without their
bytes)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select

from edge2core.common.events import as_utc
from edge2core.common.identifiers import ID_PATTERN
from edge2core.core.api.deps import Services
from edge2core.core.curate.governance import EraseRequest, ErasureReport
from edge2core.core.db.schema import QuarantineRow
from edge2core.core.jsontypes import UtcDateTime

router = APIRouter(prefix="/v1/governance", tags=["governance"])


class QuarantinedPhoto(BaseModel):
    sha256: str
    site: str
    device: str
    reason: str
    detail: str
    attempts: int
    first_at: UtcDateTime
    last_at: UtcDateTime


@router.post("/erasures", status_code=201)
async def erase(request: EraseRequest, services: Services) -> ErasureReport:
    return await run_in_threadpool(services.governance.erase, request)


@router.get("/erasures")
def erasures(services: Services, limit: int = Query(100, ge=1, le=1000)) -> list[ErasureReport]:
    return services.governance.history(limit)


@router.post("/retention")
async def retention(services: Services) -> list[ErasureReport]:
    return await run_in_threadpool(services.governance.apply_retention)


@router.get("/quarantine", response_model=list[QuarantinedPhoto])
def quarantine(services: Services,
               site: str | None = Query(None, pattern=ID_PATTERN, max_length=64),
               limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
    """Newest first. Times are written as stored rows give them, in UTC with an offset."""
    stmt = select(QuarantineRow).order_by(QuarantineRow.last_at.desc()).limit(limit)
    if site is not None:
        stmt = stmt.where(QuarantineRow.site == site)
    with services.sessions() as session:
        rows = session.scalars(stmt).all()
    return JSONResponse([
        {"sha256": r.sha256, "site": r.site, "device": r.device, "reason": r.reason,
         "detail": r.detail, "attempts": r.attempts,
         "first_at": as_utc(r.first_at).isoformat(),
         "last_at": as_utc(r.last_at).isoformat()} for r in rows
    ])
