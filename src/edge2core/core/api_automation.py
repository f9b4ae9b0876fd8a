"""The learning loop's HTTP API: what it would do now, run it once, why a site runs a model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from edge2core.core.automation import Busy, decide


def automation_router(services: Any) -> APIRouter:
    router = APIRouter(tags=["automation"])

    def loop():  # type: ignore[no-untyped-def]
        if services.loop is None:
            raise HTTPException(404, "this core runs no learning loop")
        return services.loop

    @router.get("/v1/automation/decision")
    async def decision() -> dict[str, Any]:
        """A dry run: the trigger that would fire now (null if none), and the inputs."""
        inputs = await run_in_threadpool(loop().inputs)
        found = decide(inputs, loop().policy)
        return {"decision": asdict(found) if found else None,
                "inputs": {**asdict(inputs), "since_full_s": min(inputs.since_full_s, 1e12)}}

    @router.post("/v1/automation/step")
    async def step() -> dict[str, Any]:
        """Look at the state and run what it calls for, now (blocks until the rollout ends)."""
        try:
            model = await run_in_threadpool(lambda: loop().step(wait=False))
        except Busy as exc:
            raise HTTPException(409, f"{exc}; try again when it is done") from exc
        return {"model": model.model_dump(mode="json") if model else None}

    @router.post("/v1/automation/retry")
    def retry() -> dict[str, Any]:
        """Forget stopped rollouts, so their triggers may fire again (after a person looked)."""
        cleared, loop().blocked = sorted(loop().blocked), set()  # rebinding: no lock needed
        loop().wake.set()
        return {"cleared": cleared}

    @router.get("/v1/sites")
    def site_reports() -> dict[str, Any]:
        reports = loop().reports
        return {"sites": reports.all()}

    @router.get("/v1/sites/{site}/why")
    async def why(site: str) -> dict[str, Any]:
        """Why is this model at this site: target, dataset, trigger, gate, rollout."""
        return await run_in_threadpool(loop().explain, site)

    return router
