"""The model registry over HTTP: versions and the one in production, artefact downloads
(streamed, resumable with `Range: bytes=N-`), signatures, run records, training logs and
confusion matrices, comparison, promotion through the gate, rollback, retirement, reruns."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.background import BackgroundTask

from edge2core.common.errors import Conflict, Invalid, NotFound
from edge2core.common.identifiers import Identifier
from edge2core.common.signing import SignatureError
from edge2core.core.api.deps import CoreServices, Services
from edge2core.core.api.openapi import binary_answer, errors
from edge2core.core.api.params import INT32_MAX, Version
from edge2core.core.deliver.registry import ArtifactRef, ModelInfo
from edge2core.core.jsontypes import JSON_INTEGER, JsonBool

router = APIRouter(prefix="/v1/models", tags=["models"])

KINDS = "full, head, backbone, int8, ..."
CHUNK = 1 << 20


class PromoteRequest(BaseModel):
    # The document states the two rules between fields that the route enforces (400): a
    # forced promotion has a reason, only a canary has sites.
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"properties": {"force": {"const": True}}, "required": ["force"]},
         "then": {"properties": {"reason": {"minLength": 1, "pattern": "\\S"}},
                  "required": ["reason"]}},
        {"if": {"properties": {"stage": {"const": "canary"}}, "required": ["stage"]},
         "then": {"properties": {"sites": {"minItems": 1}}, "required": ["sites"]},
         "else": {"properties": {"sites": {"maxItems": 0}}}},
    ]})

    stage: Literal["candidate", "canary", "production"] = "production"
    force: JsonBool = False
    reason: str = Field(default="", max_length=500,
                        description="why (required with force; kept in the history)")
    sites: list[Identifier] = Field(default_factory=list,
                                    description="a canary's sites (only a canary has sites)")


def _rollback_schema(schema: dict[str, Any]) -> None:
    # A reason is required (the route answers 400 without one); `to` is a version or absent.
    schema["required"] = ["reason"]
    to = schema["properties"]["to"]
    to.update(next(b for b in to.pop("anyOf") if b.get("type") == "integer"))
    to.pop("default", None)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra=_rollback_schema)

    reason: str = Field(default="", max_length=500, description="why (required; kept in the "
                        "history)", json_schema_extra={"minLength": 1, "pattern": "\\S"})
    to: Annotated[int, Field(ge=1, le=INT32_MAX), JSON_INTEGER] | None = Field(
        default=None, description="the version to go back to (default: the last one)")

    @field_validator("to", mode="before")
    @classmethod
    def _version_or_absent(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("give a version, or leave `to` out for the last one")
        return value


class RetireRequest(BaseModel):
    reason: str = Field(default="", max_length=500)


class RangeNotSatisfiable(Invalid):
    """A `Range` starting at or past the end of the file (416, with the file's size)."""

    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the file has {size} bytes")
        self.headers = {"Content-Range": f"bytes */{size}"}


def bad_request(detail: str) -> Invalid:
    """A request that breaks a rule between its fields (400, as the document states)."""
    return Invalid(detail, code="bad_request")


# --- versions --------------------------------------------------------------------------------

@router.get("")
def list_models(services: Services) -> list[ModelInfo]:
    return services.registry.list()


@router.get("/production", responses=errors(404))
def production_model(services: Services) -> ModelInfo:
    model = services.registry.production()
    if model is None:
        raise NotFound("no model is in production yet")
    return model


@router.get("/{version:int}", responses=errors(404))
def get_model(version: Version, services: Services) -> ModelInfo:
    return services.registry.get(version)


# --- artefacts: one streamed handler, two paths -------------------------------------------

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


def artifact_ref(model: ModelInfo, kind: str) -> ArtifactRef:
    """A version's file of this kind (a version registered before `artifacts` existed has
    only its main file, `full`)."""
    ref = model.artifacts.get(kind)
    if ref is None and kind == "full":
        ref = ArtifactRef(key=model.artifact_key, sha256=model.sha256, size=model.size)
    if ref is None:
        raise NotFound(f"model {model.version} has no {kind!r} artefact")
    return ref


def stream_artifact(services: CoreServices, version: int, kind: str, range_: str) -> Response:
    """The file from the requested offset, read from the store a MiB at a time."""
    ref = artifact_ref(services.registry.get(version), kind)
    start = resume_offset(range_, ref.size)
    if start is None:
        raise RangeNotSatisfiable(ref.size)
    handle = services.store.open(ref.key)
    handle.seek(start)
    headers = {"Content-Length": str(ref.size - start), "X-E2C-Sha256": ref.sha256,
               "X-E2C-Kind": kind, "Accept-Ranges": "bytes"}
    if start:
        headers["Content-Range"] = f"bytes {start}-{ref.size - 1}/{ref.size}"
    return StreamingResponse(
        iter(lambda: handle.read(CHUNK), b""),
        status_code=206 if start else 200,
        media_type="application/octet-stream",
        headers=headers,
        background=BackgroundTask(handle.close),
    )


ARTIFACT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: binary_answer("application/octet-stream", "The whole file"),
    206: binary_answer("application/octet-stream", "The file from the requested offset"),
    **errors(404, 416)}


@router.get("/{version:int}/artifact", response_class=Response, responses=ARTIFACT_ANSWERS)
def model_artifact(
    version: Version, services: Services,
    kind: str = Query("full", max_length=64, description=KINDS),
    range_: str = Header("", alias="Range"),
) -> Response:
    """A model file; `Range: bytes=N-` resumes an interrupted download at byte N."""
    return stream_artifact(services, version, kind, range_)


@router.get("/{version:int}/artifacts/{kind}", response_class=Response,
            responses=ARTIFACT_ANSWERS, deprecated=True)
def model_artifact_by_kind(
    version: Version, services: Services,
    kind: str = Path(max_length=64, description=KINDS),
    range_: str = Header("", alias="Range"),
) -> Response:
    """The same file as `/artifact?kind=`, by an older path."""
    return stream_artifact(services, version, kind, range_)


@router.get("/{version:int}/signature", responses=errors(404))
def signature(version: Version, services: Services) -> dict[str, Any]:
    model = services.registry.get(version)
    if not model.signature:
        raise NotFound(f"model {version} is not signed")
    return model.signature


@router.get("/{version:int}/verify", responses=errors(404, 409))
def verify(version: Version, services: Services) -> dict[str, Any]:
    """The signature and every artefact's bytes checked again; 409 `signature` if not."""
    try:
        return {"version": version, "verified": services.registry.verify(version)}
    except SignatureError as exc:
        raise Conflict(str(exc), code="signature") from exc


# --- what the run left --------------------------------------------------------------------

def lineage_object(services: CoreServices, version: int, name: str) -> bytes:
    """An object the run stored (`record_key`, `log_key`, `confusion_key`)."""
    key = services.registry.get(version).lineage.get(name)
    if not key:
        raise NotFound(f"model {version} has no {name.removesuffix('_key')}")
    return services.store.get(key)


@router.get("/{version:int}/run", responses=errors(404))
def run_record(version: Version, services: Services) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(lineage_object(services, version, "record_key"))
    return record


@router.get("/{version:int}/log", responses=errors(404))
def training_log(version: Version, services: Services) -> list[dict[str, Any]]:
    data = lineage_object(services, version, "log_key")
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@router.get("/{version:int}/confusion.png", response_class=Response, responses={
    200: binary_answer("image/png", "The confusion matrix on the validation split"),
    **errors(404)})
def confusion(version: Version, services: Services) -> Response:
    return Response(lineage_object(services, version, "confusion_key"), media_type="image/png")


@router.post("/{version:int}/rerun", responses=errors(404))
async def rerun(version: Version, services: Services, register: bool = False) -> dict[str, Any]:
    """Train again from the run record (same data, seed and parameters): reproducibility."""
    record = json.loads(lineage_object(services, version, "record_key"))
    result: dict[str, Any] = await run_in_threadpool(
        lambda: services.trainer.rerun(record, register=register))
    return result


# --- stages ---------------------------------------------------------------------------------

@router.get("/{version:int}/compare/{baseline:int}", responses=errors(404))
async def compare(version: Version, baseline: Version, services: Services,
                  evaluate: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = await run_in_threadpool(
        services.registry.compare, baseline, version, evaluate=evaluate)
    return result


@router.post("/{version:int}/promote", responses=errors(400, 404, 409))
async def promote(version: Version, req: PromoteRequest, services: Services) -> ModelInfo:
    """Through the gate (409 `gate_failed` with its report), unless forced with a reason."""
    if (req.stage == "canary") != bool(req.sites):
        raise bad_request("a canary names the sites it runs on (and only a canary does)")
    if req.force and not req.reason.strip():
        raise bad_request("force needs a reason (it is logged and kept in the model's history)")
    try:
        return await run_in_threadpool(
            lambda: services.registry.promote(version, stage=req.stage, force=req.force,
                                              reason=req.reason, sites=req.sites))
    except ValueError as exc:  # the model's state forbids it (e.g. retired, no force)
        raise Conflict(str(exc)) from exc


@router.post("/rollback", responses=errors(400, 404, 409))
def rollback(req: RollbackRequest, services: Services) -> ModelInfo:
    if not req.reason.strip():
        raise bad_request("a rollback needs a reason")
    try:
        return services.registry.rollback(req.reason, to=req.to)
    except ValueError as exc:
        raise Conflict(str(exc)) from exc


@router.post("/{version:int}/retire", responses=errors(404, 409))
def retire(version: Version, req: RetireRequest, services: Services) -> ModelInfo:
    try:
        return services.registry.retire(version, req.reason)
    except ValueError as exc:  # the production model: roll back instead
        raise Conflict(str(exc)) from exc
