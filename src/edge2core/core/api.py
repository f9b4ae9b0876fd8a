"""The core's HTTP API: uploads from edge sites, datasets, training, models, catalogue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from edge2core.common.events import META_HEADER, ModelPublished, PhotoRecord
from edge2core.common.metrics import mount_metrics
from edge2core.common.objectstore import ObjectStore
from edge2core.core.access import AdminAccess, site_token_ok
from edge2core.core.api_automation import automation_router
from edge2core.core.api_catalogue import catalogue_router
from edge2core.core.api_models import models_router
from edge2core.core.api_uploads import (
    ImagePutFastPath,
    receipt_response,
    upload_refusal,
)
from edge2core.core.audit import AuditLog
from edge2core.core.automation import LearningLoop
from edge2core.core.catalogue import Catalogue
from edge2core.core.datasets import DatasetInfo, DatasetQuery, DatasetStore
from edge2core.core.receiver import ImageReceiver, UploadError
from edge2core.core.registry import ModelInfo, ModelRegistry
from edge2core.core.routes import core_routes
from edge2core.core.schema import ImageRow
from edge2core.core.site_reports import SiteReports
from edge2core.core.trainer import Trainer


@dataclass
class CoreServices:
    store: ObjectStore
    sessions: sessionmaker[Session]
    receiver: ImageReceiver
    datasets: DatasetStore
    registry: ModelRegistry
    catalogue: Catalogue
    trainer: Trainer
    site_tokens: dict[str, str]
    retention_days: dict[str, int] = field(default_factory=dict)
    admin_token: str | None = None
    audit: AuditLog | None = None
    reports: SiteReports | None = None
    loop: LearningLoop | None = None


class TrainRequest(BaseModel):
    dataset_version: int
    seed: int = 0
    path: Literal["fast", "full"] = "fast"  # cached embeddings + head, or fine-tuning
    params: dict = {}  # hyper-parameters (core.trainer.FAST_DEFAULTS, core.finetune.FineTuneConfig)


class TrainResponse(BaseModel):
    model: ModelInfo
    timings_s: dict[str, float]


def resume_offset(range_header: str, size: int) -> int | None:
    """The start of an open-ended `bytes=N-` range (0 without one); None if unsatisfiable."""
    if not range_header:
        return 0
    unit, _, spec = range_header.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or last.strip() or not first.strip().isdigit():
        return 0  # other range forms: send the whole file, which HTTP allows
    start = int(first)
    return start if start < size else None


def create_core_app(services: CoreServices) -> FastAPI:
    app = FastAPI(title="edge2core core", version="0.1.0")
    mount_metrics(app)

    @app.exception_handler(UploadError)
    async def upload_error(_req: Request, exc: UploadError) -> JSONResponse:
        return upload_refusal(exc)

    @app.exception_handler(LookupError)
    async def not_found(_req: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def photo_record(
        sha256: str, meta: str = Header(alias=META_HEADER), authorization: str = Header("")
    ) -> PhotoRecord:
        try:
            record = PhotoRecord.model_validate_json(meta)
        except ValidationError as exc:
            raise UploadError(400, "bad_metadata", f"{META_HEADER} is invalid: {exc}") from exc
        if record.sha256 != sha256:
            raise UploadError(400, "bad_metadata", "the URL and the metadata name different ids")
        if not site_token_ok(services.site_tokens, record.site, authorization):
            raise UploadError(401, "unauthorized", f"no valid token for site {record.site!r}")
        return record

    @app.head("/v1/images/{sha256}")
    def image_head(sha256: str) -> Response:
        found = services.receiver.existing(sha256)
        return Response(status_code=200 if found else 404)

    # Well-formed one-shot uploads skip the framework (same answers; see ImagePutFastPath).
    app.add_middleware(ImagePutFastPath, services=services)
    # Outermost: who may read and change what (uploads keep their per-site tokens).
    app.add_middleware(AdminAccess, admin_token=services.admin_token,
                       site_tokens=services.site_tokens)

    @app.put("/v1/images/{sha256}")
    async def upload_image(
        request: Request, record: PhotoRecord = Depends(photo_record)
    ) -> JSONResponse:
        return receipt_response(await services.receiver.receive(record, request.stream()))

    @app.get("/v1/stats")
    def stats() -> dict:
        with services.sessions() as session:
            rows = session.execute(
                select(ImageRow.source, ImageRow.site, func.count()).group_by(
                    ImageRow.source, ImageRow.site
                )
            ).all()
        by_source: dict[str, int] = {}
        for source, _site, count in rows:
            by_source[source] = by_source.get(source, 0) + count
        return {"images": sum(by_source.values()), "by_source": by_source}

    @app.post("/v1/datasets", status_code=201)
    def build_dataset(query: DatasetQuery) -> DatasetInfo:
        return services.datasets.build(query)

    @app.get("/v1/datasets/{version}")
    def get_dataset(version: int) -> DatasetInfo:
        return services.datasets.get(version)

    @app.post("/v1/training-runs", status_code=201)
    async def train(req: TrainRequest) -> TrainResponse:
        try:
            result = await run_in_threadpool(
                services.trainer.train, req.dataset_version, seed=req.seed, path=req.path,
                params=req.params,
            )
        except ValueError as exc:  # e.g. a dataset of one class, a bad hyper-parameter
            raise HTTPException(422, str(exc)) from exc
        return TrainResponse(model=result.model, timings_s=result.timings_s)

    @app.get("/v1/models")
    def list_models() -> list[ModelInfo]:
        return services.registry.list()

    @app.get("/v1/models/production")
    def production_model() -> ModelInfo:
        model = services.registry.production()
        if model is None:
            raise LookupError("no model is in production yet")
        return model

    @app.get("/v1/sites/{site}/model")
    def site_model(site: str) -> ModelPublished:
        """What a site should run (a canary targeting it, else production): the HTTP twin of
        the `e2c-deploy` KV bucket, for sites without a leaf link."""
        model = services.registry.desired_for(site)
        if model is None:
            raise LookupError("no model is in production yet")
        return model.published()

    @app.get("/v1/models/{version}")
    def get_model(version: int) -> ModelInfo:
        return services.registry.get(version)

    @app.get("/v1/models/{version}/artifact")
    def model_artifact(
        version: int, kind: str = "full", range_: str = Header("", alias="Range")
    ) -> Response:
        """A model file (`kind`: full, head, backbone, int8); `Range: bytes=N-` resumes an
        interrupted download at byte N."""
        model = services.registry.get(version)
        ref = model.artifacts.get(kind)
        if ref is None:
            raise LookupError(f"model {version} has no {kind!r} artefact")
        start = resume_offset(range_, ref.size)
        if start is None:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{ref.size}"})
        handle = services.store.open(ref.key)
        handle.seek(start)
        headers = {"Content-Length": str(ref.size - start), "X-E2C-Sha256": ref.sha256,
                   "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{ref.size - 1}/{ref.size}"
        return StreamingResponse(
            iter(lambda: handle.read(1 << 20), b""),
            status_code=206 if start else 200,
            media_type="application/octet-stream",
            headers=headers,
            background=BackgroundTask(handle.close),
        )

    app.include_router(automation_router(services))
    app.include_router(catalogue_router(services))  # products, promotions, images, audit
    app.include_router(models_router(services))  # registry: compare, promote, rollback, ...
    app.include_router(core_routes(services))  # uploads, datasets, labelling, governance
    return app
