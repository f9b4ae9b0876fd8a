"""The audit log over HTTP: who changed what in the catalogue, the registry and the loop."""

from __future__ import annotations

from fastapi import APIRouter, Query

from edge2core.core.api.deps import Services
from edge2core.core.audit import MAX_LIMIT, AuditEvent
from edge2core.core.jsontypes import UtcDateTime

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def audit_events(
    services: Services,
    kind_prefix: str | None = Query(None, description='e.g. "catalogue." or "model.promoted"'),
    subject: str | None = Query(None, description="a SKU, a model version, ..."),
    since: UtcDateTime | None = None,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
) -> list[AuditEvent]:
    """Newest first."""
    return services.audit.query(kind_prefix, subject, since=since, limit=limit)
