"""HTTP routes of the model registry beyond list/get/artifact (in ``core.api``): artefacts by
kind, signatures and the signing key, run records, training logs and confusion matrices,
comparison, promotion through the gate, rollback, retirement, reruns."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge2core.common.identifiers import Identifier
from edge2core.common.signing import SignatureError
from edge2core.core.api.errors import INT32_MAX, Version, binary_answer, errors
from edge2core.core.deliver.registry import GateBlocked, ModelInfo, dump_report
from edge2core.core.api.jsontypes import JsonBool, json_int

ArtifactKind = Path(max_length=64, description="full, head, backbone, int8, ...")


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
    to: json_int(ge=1, le=INT32_MAX) | None = Field(
        default=None, description="the version to go back to (default: the last one)")

    @field_validator("to", mode="before")
    @classmethod
    def _version_or_absent(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("give a version, or leave `to` out for the last one")
        return value


class RetireRequest(BaseModel):
    reason: str = Field(default="", max_length=500)


def models_router(services: Any) -> APIRouter:
    """Routes over ``services.registry``, ``services.trainer`` and ``services.store``."""
    router = APIRouter(tags=["models"])
    registry = services.registry

    def conflict(exc: Exception) -> HTTPException:
        return HTTPException(409, {"error": "conflict", "detail": str(exc)})

    def bad_request(detail: str) -> HTTPException:
        return HTTPException(400, {"error": "bad_request", "detail": detail})

    @router.get("/v1/signing-key", responses=errors(404))
    def signing_key() -> dict[str, str]:
        if registry.signer is None:
            raise HTTPException(404, "this core signs nothing (no key)")
        return {"algorithm": "ed25519", "key_id": registry.signer.key_id,
                "public_key": registry.signer.public_key_b64()}

    @router.get("/v1/models/{version:int}/signature", responses=errors(404))
    def signature(version: Version) -> dict[str, Any]:
        model = registry.get(version)
        if not model.signature:
            raise HTTPException(404, f"model {version} is not signed")
        return model.signature

    @router.get("/v1/models/{version:int}/verify", responses=errors(404, 409))
    def verify(version: Version) -> dict[str, Any]:
        try:
            return {"version": version, "verified": registry.verify(version)}
        except SignatureError as exc:
            return JSONResponse({"version": version, "error": "signature", "detail": str(exc)}, status_code=409)

    @router.get("/v1/models/{version:int}/artifacts/{kind}", response_class=Response, responses={
        200: binary_answer("application/octet-stream", "The artefact's bytes"), **errors(404)})
    def artifact(version: Version, kind: str = ArtifactKind) -> Response:
        ref, data = registry.artifact(version, kind)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-E2C-Sha256": ref.sha256, "X-E2C-Kind": kind})

    def lineage_key(version: int, name: str) -> str:
        key = registry.get(version).lineage.get(name)
        if not key:
            raise HTTPException(404, f"model {version} has no {name.removesuffix('_key')}")
        return key

    @router.get("/v1/models/{version:int}/run", responses=errors(404))
    def run_record(version: Version) -> dict[str, Any]:
        return json.loads(services.store.get(lineage_key(version, "record_key")))

    @router.get("/v1/models/{version:int}/log", responses=errors(404))
    def training_log(version: Version) -> list[dict[str, Any]]:
        data = services.store.get(lineage_key(version, "log_key"))
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    @router.get("/v1/models/{version:int}/confusion.png", response_class=Response, responses={
        200: binary_answer("image/png", "The confusion matrix on the validation split"),
        **errors(404)})
    def confusion(version: Version) -> Response:
        return Response(services.store.get(lineage_key(version, "confusion_key")), media_type="image/png")

    @router.get("/v1/models/{version:int}/compare/{baseline:int}", responses=errors(404))
    async def compare(version: Version, baseline: Version, evaluate: bool = True) -> dict[str, Any]:
        return await run_in_threadpool(registry.compare, baseline, version, evaluate=evaluate)

    @router.post("/v1/models/{version:int}/promote", responses=errors(400, 404, 409))
    async def promote(version: Version, req: PromoteRequest) -> ModelInfo:
        if (req.stage == "canary") != bool(req.sites):
            raise bad_request("a canary names the sites it runs on (and only a canary does)")
        if req.force and not req.reason.strip():
            raise bad_request("force needs a reason (it is logged and kept in the model's history)")
        try:
            return await run_in_threadpool(
                lambda: registry.promote(version, stage=req.stage, force=req.force, reason=req.reason,
                                 sites=req.sites))
        except GateBlocked as exc:
            return JSONResponse({"error": "gate_failed", "detail": str(exc),
                                 "report": dump_report(exc.report)}, status_code=409)
        except ValueError as exc:  # the model's state forbids it (e.g. retired, no force)
            raise conflict(exc) from exc

    @router.post("/v1/models/rollback", responses=errors(400, 404, 409))
    def rollback(req: RollbackRequest) -> ModelInfo:
        if not req.reason.strip():
            raise bad_request("a rollback needs a reason")
        try:
            return registry.rollback(req.reason, to=req.to)
        except ValueError as exc:
            raise conflict(exc) from exc

    @router.post("/v1/models/{version:int}/retire", responses=errors(404, 409))
    def retire(version: Version, req: RetireRequest) -> ModelInfo:
        try:
            return registry.retire(version, req.reason)
        except ValueError as exc:  # the production model: roll back instead
            raise conflict(exc) from exc

    @router.post("/v1/models/{version:int}/rerun", responses=errors(404))
    async def rerun(version: Version, register: bool = False) -> dict[str, Any]:
        record = json.loads(services.store.get(lineage_key(version, "record_key")))
        return await run_in_threadpool(lambda: services.trainer.rerun(record, register=register))

    return router
