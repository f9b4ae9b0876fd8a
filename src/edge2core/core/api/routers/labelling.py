"""The labelling queue: shopper photos the edge could not recognise, for a person to confirm
the edge's guess, correct it, name a new product, or discard. A decision that does not fit the
task's state is 409 (`LabelConflict`), a SKU the catalogue does not know 422 `unknown_sku`."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from edge2core.common.identifiers import ID_PATTERN, SKU_PATTERN, Sku
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors
from edge2core.core.api.params import INT32_MAX, PhotoId
from edge2core.core.curate.labelling import LabelStatus, LabelTask, NewProduct, TaskPage

router = APIRouter(prefix="/v1/labelling", tags=["labelling"])


class Decision(BaseModel):
    by: str | None = Field(default=None, max_length=64, description="who decided")


class Correction(Decision):
    sku: Sku


class NewProductDecision(Decision, NewProduct):
    pass


@router.get("/tasks")
def list_tasks(
    services: Services,
    status: LabelStatus | None = LabelStatus.PENDING,
    site: str | None = Query(None, pattern=ID_PATTERN, max_length=64),
    reason: str | None = Query(None, max_length=16),
    guess: str | None = Query(None, pattern=SKU_PATTERN, max_length=64,
                              description="the edge's top guess"),
    max_confidence: float | None = Query(None, allow_inf_nan=False),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=INT32_MAX),
) -> TaskPage:
    return services.labelling.list(status=status, site=site, reason=reason, guess=guess,
                                   max_confidence=max_confidence, limit=limit, offset=offset)


@router.get("/tasks/{sha256}", responses=errors(404))
def get_task(sha256: PhotoId, services: Services) -> LabelTask:
    return services.labelling.get(sha256)


@router.post("/tasks/{sha256}/confirm", responses=errors(404, 409, 422))
def confirm(sha256: PhotoId, services: Services, body: Decision | None = None) -> LabelTask:
    return services.labelling.confirm(sha256, by=body.by if body else None)


@router.post("/tasks/{sha256}/correct", responses=errors(404, 409, 422))
def correct(body: Correction, sha256: PhotoId, services: Services) -> LabelTask:
    return services.labelling.correct(sha256, body.sku, by=body.by)


@router.post("/tasks/{sha256}/new-product", responses=errors(404, 409, 422))
def new_product(body: NewProductDecision, sha256: PhotoId, services: Services) -> LabelTask:
    product = NewProduct.model_validate(body.model_dump(exclude={"by"}))
    return services.labelling.new_product(sha256, product, by=body.by)


@router.post("/tasks/{sha256}/discard", responses=errors(404, 409))
def discard(sha256: PhotoId, services: Services, body: Decision | None = None) -> LabelTask:
    return services.labelling.discard(sha256, by=body.by if body else None)
