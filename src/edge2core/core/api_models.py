"""HTTP routes of the model registry beyond list/get/artifact (in ``core.api``): artefacts by
kind, signatures and the signing key, run records, training logs and confusion matrices,
comparison, promotion through the gate, rollback, retirement, reruns."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from edge2core.common.signing import SignatureError
from edge2core.core.registry import GateBlocked, ModelInfo, dump_report


class PromoteRequest(BaseModel):
    stage: str = "production"
    force: bool = False
    reason: str = ""
    sites: list[str] = Field(default_factory=list, description="a canary's sites")


class RollbackRequest(BaseModel):
    reason: str = ""
    to: int | None = None


class RetireRequest(BaseModel):
    reason: str = ""


def models_router(services: Any) -> APIRouter:
    """Routes over ``services.registry``, ``services.trainer`` and ``services.store``."""
    router = APIRouter(tags=["models"])
    registry = services.registry

    def bad(exc: Exception, status: int = 400) -> HTTPException:
        return HTTPException(status, str(exc))

    @router.get("/v1/signing-key")
    def signing_key() -> dict[str, str]:
        if registry.signer is None:
            raise HTTPException(404, "this core signs nothing (no key)")
        return {"algorithm": "ed25519", "key_id": registry.signer.key_id,
                "public_key": registry.signer.public_key_b64()}

    @router.get("/v1/models/{version}/signature")
    def signature(version: int) -> dict[str, Any]:
        model = registry.get(version)
        if not model.signature:
            raise HTTPException(404, f"model {version} is not signed")
        return model.signature

    @router.get("/v1/models/{version}/verify")
    def verify(version: int) -> dict[str, Any]:
        try:
            return {"version": version, "verified": registry.verify(version)}
        except SignatureError as exc:
            return JSONResponse({"version": version, "error": "signature", "detail": str(exc)}, status_code=409)

    @router.get("/v1/models/{version}/artifacts/{kind}")
    def artifact(version: int, kind: str) -> Response:
        ref, data = registry.artifact(version, kind)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-E2C-Sha256": ref.sha256, "X-E2C-Kind": kind})

    def lineage_key(version: int, name: str) -> str:
        key = registry.get(version).lineage.get(name)
        if not key:
            raise HTTPException(404, f"model {version} has no {name.removesuffix('_key')}")
        return key

    @router.get("/v1/models/{version}/run")
    def run_record(version: int) -> dict[str, Any]:
        return json.loads(services.store.get(lineage_key(version, "record_key")))

    @router.get("/v1/models/{version}/log")
    def training_log(version: int) -> list[dict[str, Any]]:
        data = services.store.get(lineage_key(version, "log_key"))
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    @router.get("/v1/models/{version}/confusion.png")
    def confusion(version: int) -> Response:
        return Response(services.store.get(lineage_key(version, "confusion_key")), media_type="image/png")

    @router.get("/v1/models/{version}/compare/{baseline}")
    async def compare(version: int, baseline: int, evaluate: bool = True) -> dict[str, Any]:
        return await run_in_threadpool(registry.compare, baseline, version, evaluate=evaluate)

    @router.post("/v1/models/{version}/promote")
    async def promote(version: int, req: PromoteRequest) -> ModelInfo:
        try:
            return await run_in_threadpool(
                lambda: registry.promote(version, stage=req.stage, force=req.force, reason=req.reason,
                                 sites=req.sites))
        except GateBlocked as exc:
            return JSONResponse({"error": "gate_failed", "detail": str(exc),
                                 "report": dump_report(exc.report)}, status_code=409)
        except ValueError as exc:
            raise bad(exc) from exc

    @router.post("/v1/models/rollback")
    def rollback(req: RollbackRequest) -> ModelInfo:
        if not req.reason.strip():
            raise HTTPException(400, "a rollback needs a reason")
        return registry.rollback(req.reason, to=req.to)

    @router.post("/v1/models/{version}/retire")
    def retire(version: int, req: RetireRequest) -> ModelInfo:
        try:
            return registry.retire(version, req.reason)
        except ValueError as exc:
            raise bad(exc) from exc

    @router.post("/v1/models/{version}/rerun")
    async def rerun(version: int, register: bool = False) -> dict[str, Any]:
        record = json.loads(services.store.get(lineage_key(version, "record_key")))
        return await run_in_threadpool(lambda: services.trainer.rerun(record, register=register))

    return router
