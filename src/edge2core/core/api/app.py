"""The core's HTTP API: uploads from edge sites, datasets, training, models, catalogue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from edge2core.common.events import META_HEADER, ModelPublished, PhotoRecord
from edge2core.common.identifiers import IdKind, is_valid
from edge2core.common.metrics import mount_metrics
from edge2core.common.objectstore import ObjectStore
from edge2core.core.api.access import AdminAccess, site_token_ok, token_required
from edge2core.core.api.automation import automation_router
from edge2core.core.api.catalogue import catalogue_router
from edge2core.core.api.errors import (
    INT32_MAX,
    Version,
    binary_answer,
    binary_body,
    document_core_api,
    error_response,
    errors,
    install_error_handling,
)
from edge2core.core.api.models import models_router
from edge2core.core.api.uploads import (
    ImagePutFastPath,
    receipt_response,
    upload_refusal,
)
from edge2core.core.audit import AuditLog
from edge2core.core.loop.automation import LearningLoop
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetInfo, DatasetQuery, DatasetStore
from edge2core.core.api.jsontypes import json_int
from edge2core.core.ingest.receiver import ImageReceiver, UploadError
from edge2core.core.deliver.registry import ModelInfo, ModelRegistry
from edge2core.core.api.routes import core_routes
from edge2core.core.db.schema import ImageRow
from edge2core.core.deliver.site_reports import SiteReports
from edge2core.core.train.run import Trainer


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


JsonScalar = bool | int | float | str | None


class TrainRequest(BaseModel):
    # JSON types as the document states them ("1" is not an integer).
    dataset_version: json_int(ge=1, le=INT32_MAX)
    seed: json_int(ge=0, le=2**32 - 1) = 0
    path: Literal["fast", "full"] = "fast"  # cached embeddings + head, or fine-tuning
    # Hyper-parameters (core.trainer.FAST_DEFAULTS, core.finetune.FineTuneConfig, backbone,
    # base_backbone): JSON scalars; unknown names are refused (422) before a run starts.
    params: dict[str, JsonScalar] = {}


def check_params(params: dict[str, Any]) -> None:
    """Refuse (ValueError) hyper-parameters a run does not know, and backbone names that are
    not plain names (they become object keys)."""
    from edge2core.core.train.finetune import FineTuneConfig
    from edge2core.core.train.run import FAST_DEFAULTS

    known = {*FAST_DEFAULTS, *FineTuneConfig.__dataclass_fields__, "backbone", "base_backbone",
             "full_head"}
    if unknown := sorted(set(params) - known):
        raise ValueError(f"unknown hyper-parameters {unknown}; known: {sorted(known)}")
    for name in ("backbone", "base_backbone"):
        value = params.get(name)
        if value is not None and not (isinstance(value, str) and is_valid(IdKind.SKU, value)):
            raise ValueError(f"{name} names a backbone version (letters, digits, '.', '_', '-')")


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
    app = FastAPI(title="edge2core core", version="0.1.0", description=(
        "The core of edge2core. Every error is JSON `{\"error\": code, \"detail\": message}` "
        "(the `Error` schema); requests that do not fit the schema are answered 422 `invalid`."))
    mount_metrics(app)

    @app.exception_handler(UploadError)
    async def upload_error(_req: Request, exc: UploadError) -> JSONResponse:
        return upload_refusal(exc)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def photo_record(
        sha256: str, meta: str = Header(alias=META_HEADER), authorization: str = Header("")
    ) -> PhotoRecord:
        if not site_token_ok(services.site_tokens, None, authorization):
            raise UploadError(401, "unauthorized", "no valid site token")
        try:
            record = PhotoRecord.model_validate_json(meta)
        except ValidationError as exc:
            raise UploadError(400, "bad_metadata", f"{META_HEADER} is invalid: {exc}") from exc
        if record.sha256 != sha256:
            raise UploadError(400, "bad_metadata", "the URL and the metadata name different ids")
        if not site_token_ok(services.site_tokens, record.site, authorization):
            raise UploadError(401, "unauthorized", f"no valid token for site {record.site!r}")
        return record

    @app.head("/v1/images/{sha256}", response_class=Response, responses={
        200: {"description": "The core has the photo (or erased it)"},
        404: {"description": "The core does not have the photo"}})
    def image_head(sha256: str) -> Response:
        found = services.receiver.existing(sha256)
        return Response(status_code=200 if found else 404)

    # Well-formed one-shot uploads skip the framework (same answers; see ImagePutFastPath).
    app.add_middleware(ImagePutFastPath, services=services)
    # Who may read and change what (uploads keep their per-site tokens).
    app.add_middleware(AdminAccess, admin_token=services.admin_token,
                       site_tokens=services.site_tokens)
    # Outermost: one error body for everything, a 500 for what nothing else caught.
    install_error_handling(app)
    document_core_api(app, lambda method, path: token_required(
        method, path, admin_token=services.admin_token, site_tokens=services.site_tokens))

    @app.put("/v1/images/{sha256}", responses={
        200: {"description": "Already stored (or erased: `erased` is true)"},
        201: {"description": "Stored: the bytes are durable and match the id"},
        **errors(400, 401, 413, 415, 422)},
        openapi_extra=binary_body("image/jpeg", description="The prepared photo"))
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

    @app.post("/v1/datasets", status_code=201, responses=errors(404))
    def build_dataset(query: DatasetQuery) -> DatasetInfo:
        return services.datasets.build(query)

    @app.get("/v1/datasets/{version:int}", responses=errors(404))
    def get_dataset(version: Version) -> DatasetInfo:
        return services.datasets.get(version)

    @app.post("/v1/training-runs", status_code=201, responses=errors(404))
    async def train(req: TrainRequest) -> TrainResponse:
        try:
            check_params(req.params)
            result = await run_in_threadpool(
                services.trainer.train, req.dataset_version, seed=req.seed, path=req.path,
                params=req.params,
            )
        except (ValueError, TypeError) as exc:  # a dataset of one class, a bad hyper-parameter
            raise HTTPException(422, {"error": "invalid", "detail": str(exc)}) from exc
        return TrainResponse(model=result.model, timings_s=result.timings_s)

    @app.get("/v1/models")
    def list_models() -> list[ModelInfo]:
        return services.registry.list()

    @app.get("/v1/models/production", responses=errors(404))
    def production_model() -> ModelInfo:
        model = services.registry.production()
        if model is None:
            raise LookupError("no model is in production yet")
        return model

    @app.get("/v1/sites/{site}/model", responses=errors(404))
    def site_model(site: str = Path(max_length=64)) -> ModelPublished:
        """What a site should run (a canary targeting it, else production): the HTTP twin of
        the `e2c-deploy` KV bucket, for sites without a leaf link. (A lookup: any name is
        answered, `-` by an edge that does not know its id yet.)"""
        model = services.registry.desired_for(site)
        if model is None:
            raise LookupError("no model is in production yet")
        return model.published()

    @app.get("/v1/models/{version:int}", responses=errors(404))
    def get_model(version: Version) -> ModelInfo:
        return services.registry.get(version)

    @app.get("/v1/models/{version:int}/artifact", response_class=Response, responses={
        200: binary_answer("application/octet-stream", "The whole file"),
        206: binary_answer("application/octet-stream", "The file from the requested offset"),
        **errors(404, 416)})
    def model_artifact(
        version: Version,
        kind: str = Query("full", max_length=64, description="full, head, backbone or int8"),
        range_: str = Header("", alias="Range"),
    ) -> Response:
        """A model file (`kind`: full, head, backbone, int8); `Range: bytes=N-` resumes an
        interrupted download at byte N."""
        model = services.registry.get(version)
        ref = model.artifacts.get(kind)
        if ref is None:
            raise LookupError(f"model {version} has no {kind!r} artefact")
        start = resume_offset(range_, ref.size)
        if start is None:
            return error_response(416, None, f"the file has {ref.size} bytes",
                                  {"Content-Range": f"bytes */{ref.size}"})
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
