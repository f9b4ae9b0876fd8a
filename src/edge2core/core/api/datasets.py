"""Routes for datasets (beyond build/get in `core.api`), labelling, governance, photo bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from edge2core.common.events import SHA256_PATTERN, as_utc
from edge2core.common.identifiers import ID_PATTERN, SKU_PATTERN, Sku
from edge2core.common.objectstore import ObjectNotFound
from edge2core.core.api.errors import INT32_MAX, Version, binary_answer, errors
from edge2core.core.curate.datasets import DatasetDiff, DatasetInfo
from edge2core.core.curate.governance import EraseRequest, ErasureReport, Governance
from edge2core.core.curate.labelling import (
    LabelConflict,
    LabellingQueue,
    LabelStatus,
    LabelTask,
    NewProduct,
    TaskPage,
    UnknownSku,
)
from edge2core.core.db.schema import ImageRow, QuarantineRow
from edge2core.core.api.jsontypes import UtcDateTime

if TYPE_CHECKING:
    from edge2core.core.api.app import CoreServices


PhotoId = Path(pattern=SHA256_PATTERN, description="the photo's sha256")


class Decision(BaseModel):
    by: str | None = Field(default=None, max_length=64, description="who decided")


class Correction(Decision):
    sku: Sku


class NewProductDecision(Decision, NewProduct):
    pass


class QuarantinedPhoto(BaseModel):
    sha256: str
    site: str
    device: str
    reason: str
    detail: str
    attempts: int
    first_at: UtcDateTime
    last_at: UtcDateTime


def governance_for(services: CoreServices) -> Governance:
    return Governance(
        services.store,
        services.sessions,
        retention_days=services.retention_days,
        uploads=services.receiver.uploads,
        on_erased=lambda ids: (services.receiver.near_dups.invalidate(),
                               services.trainer.cache.purge(ids)),
    )


def datasets_router(services: CoreServices) -> APIRouter:
    router = APIRouter(tags=["datasets"])
    datasets = services.datasets

    @router.get("/v1/datasets")
    def list_datasets() -> list[DatasetInfo]:
        return datasets.list()

    @router.get("/v1/datasets/{base:int}/diff/{other:int}", responses=errors(404))
    def diff_datasets(base: Version, other: Version,
                      limit: int = Query(1000, ge=0, le=INT32_MAX)) -> DatasetDiff:
        diff = datasets.diff(base, other)
        return diff.model_copy(update={"added": diff.added[:limit], "removed": diff.removed[:limit],
                                       "relabelled": diff.relabelled[:limit]})

    @router.get("/v1/datasets/{version:int}/manifest", response_class=Response, responses={
        200: binary_answer("application/vnd.apache.parquet", "The manifest (Parquet)"),
        **errors(404)})
    def dataset_manifest(version: Version) -> Response:
        info = datasets.get(version)
        return Response(datasets.manifest_bytes(version),
                        media_type="application/vnd.apache.parquet",
                        headers={"X-E2C-Sha256": info.manifest_sha256,
                                 "Content-Disposition":
                                     f'attachment; filename="dataset-v{version}.parquet"'})

    @router.get("/v1/images/{sha256}", response_class=Response, responses={
        200: binary_answer("image/jpeg", "The photo's bytes"), **errors(404)})
    def image_bytes(sha256: str = PhotoId) -> Response:
        with services.sessions() as session:
            row = session.get(ImageRow, sha256)
        if row is None:
            raise LookupError(f"no photo {sha256}")
        try:
            data = services.store.get(row.key)
        except ObjectNotFound as exc:
            raise LookupError(f"the bytes of photo {sha256} are gone") from exc
        return Response(data, media_type="image/jpeg", headers={"X-E2C-Sha256": sha256})

    return router


def labelling_router(services: CoreServices) -> APIRouter:
    router = APIRouter(prefix="/v1/labelling", tags=["labelling"])
    queue = LabellingQueue(services.sessions, services.catalogue)

    def decided(call) -> LabelTask:  # type: ignore[no-untyped-def]
        try:
            return call()
        except LabelConflict as exc:
            raise HTTPException(409, {"error": "conflict", "detail": str(exc)}) from exc
        except UnknownSku as exc:
            raise HTTPException(422, {"error": "unknown_sku", "detail": str(exc)}) from exc

    @router.get("/tasks")
    def list_tasks(
        status: LabelStatus | None = LabelStatus.PENDING,
        site: str | None = Query(None, pattern=ID_PATTERN, max_length=64),
        reason: str | None = Query(None, max_length=16),
        guess: str | None = Query(None, pattern=SKU_PATTERN, max_length=64,
                                  description="the edge's top guess"),
        max_confidence: float | None = Query(None, allow_inf_nan=False),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0, le=INT32_MAX),
    ) -> TaskPage:
        return queue.list(status=status, site=site, reason=reason, guess=guess,
                          max_confidence=max_confidence, limit=limit, offset=offset)

    @router.get("/tasks/{sha256}", responses=errors(404))
    def get_task(sha256: str = PhotoId) -> LabelTask:
        return queue.get(sha256)

    @router.post("/tasks/{sha256}/confirm", responses=errors(404, 409, 422))
    def confirm(sha256: str = PhotoId, body: Decision | None = None) -> LabelTask:
        return decided(lambda: queue.confirm(sha256, by=body.by if body else None))

    @router.post("/tasks/{sha256}/correct", responses=errors(404, 409, 422))
    def correct(body: Correction, sha256: str = PhotoId) -> LabelTask:
        return decided(lambda: queue.correct(sha256, body.sku, by=body.by))

    @router.post("/tasks/{sha256}/new-product", responses=errors(404, 409, 422))
    def new_product(body: NewProductDecision, sha256: str = PhotoId) -> LabelTask:
        product = NewProduct.model_validate(body.model_dump(exclude={"by"}))
        return decided(lambda: queue.new_product(sha256, product, by=body.by))

    @router.post("/tasks/{sha256}/discard", responses=errors(404, 409))
    def discard(sha256: str = PhotoId, body: Decision | None = None) -> LabelTask:
        return decided(lambda: queue.discard(sha256, by=body.by if body else None))

    return router


def governance_router(services: CoreServices) -> APIRouter:
    router = APIRouter(prefix="/v1/governance", tags=["governance"])
    governance = governance_for(services)

    @router.post("/erasures", status_code=201)
    async def erase(request: EraseRequest) -> ErasureReport:
        return await run_in_threadpool(governance.erase, request)

    @router.get("/erasures")
    def erasures(limit: int = Query(100, ge=1, le=1000)) -> list[ErasureReport]:
        return governance.history(limit)

    @router.post("/retention")
    async def retention() -> list[ErasureReport]:
        return await run_in_threadpool(governance.apply_retention)

    @router.get("/quarantine", response_model=list[QuarantinedPhoto])
    def quarantine(site: str | None = Query(None, pattern=ID_PATTERN, max_length=64),
                   limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
        stmt = select(QuarantineRow).order_by(QuarantineRow.last_at.desc()).limit(limit)
        if site is not None:
            stmt = stmt.where(QuarantineRow.site == site)
        with services.sessions() as session:
            rows = session.scalars(stmt).all()
        return JSONResponse([
            {"sha256": r.sha256, "site": r.site, "device": r.device, "reason": r.reason,
             "detail": r.detail, "attempts": r.attempts,
             "first_at": as_utc(r.first_at).isoformat(),  # type: ignore[union-attr]
             "last_at": as_utc(r.last_at).isoformat()} for r in rows  # type: ignore[union-attr]
        ])

    return router
