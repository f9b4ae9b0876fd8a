"""The learning loop's HTTP API: what it would do now, run it once, why a site runs a model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool

from edge2core.common.identifiers import ID_PATTERN
from edge2core.core.api.errors import errors
from edge2core.core.loop.automation import Busy

SitePath = Path(pattern=ID_PATTERN, max_length=64, description="a site's id")


def automation_router(services: Any) -> APIRouter:
    router = APIRouter(tags=["automation"])

    def loop():  # type: ignore[no-untyped-def]
        if services.loop is None:
            raise HTTPException(404, "this core runs no learning loop")
        return services.loop

    @router.get("/v1/automation/decision", responses=errors(404))
    async def decision() -> dict[str, Any]:
        """A dry run: the trigger that would fire now (null if none), the inputs, and the
        triggers held back (failed or without effect: tries, reason, when they go again)."""
        inputs, found = await run_in_threadpool(loop().look)
        return {"decision": asdict(found) if found else None,
                "inputs": {**asdict(inputs), "since_full_s": min(inputs.since_full_s, 1e12),
                           "since_last_photo_s": min(inputs.since_last_photo_s, 1e12)},
                "held": loop().held()}

    @router.post("/v1/automation/step", responses=errors(404, 409))
    async def step() -> dict[str, Any]:
        """Look at the state and run what it calls for, now (blocks until the rollout ends)."""
        try:
            model = await run_in_threadpool(lambda: loop().step(wait=False))
        except Busy as exc:
            raise HTTPException(409, f"{exc}; try again when it is done") from exc
        return {"model": model.model_dump(mode="json") if model else None}

    @router.post("/v1/automation/retry", responses=errors(404))
    def retry() -> dict[str, Any]:
        """Forget stopped rollouts and held triggers, so they may fire again (after a person
        looked)."""
        return {"cleared": loop().retry()}

    @router.get("/v1/sites", responses=errors(404))
    def site_reports() -> dict[str, Any]:
        reports = loop().reports
        return {"sites": reports.all()}

    @router.get("/v1/sites/{site}/why", responses=errors(404))
    async def why(site: str = SitePath) -> dict[str, Any]:
        """Why is this model at this site: target, dataset, trigger, gate, rollout."""
        return await run_in_threadpool(loop().explain, site)

    return router
