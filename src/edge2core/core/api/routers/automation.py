"""The learning loop over HTTP: what it would do now (a dry run), run it once, forget stopped
rollouts so their triggers may fire again."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors

router = APIRouter(prefix="/v1/automation", tags=["automation"])

# Times since events that never happened are infinite; JSON has no infinity.
NEVER_S = 1e12


@router.get("/decision")
async def decision(services: Services) -> dict[str, Any]:
    """A dry run: the trigger that would fire now (null if none), the inputs, and the
    triggers held back (failed or without effect: tries, reason, when they go again)."""
    inputs, found = await run_in_threadpool(services.loop.look)
    return {"decision": asdict(found) if found else None,
            "inputs": {**asdict(inputs), "since_full_s": min(inputs.since_full_s, NEVER_S),
                       "since_last_photo_s": min(inputs.since_last_photo_s, NEVER_S)},
            "held": services.loop.held()}


@router.post("/step", responses=errors(409))
async def step(services: Services) -> dict[str, Any]:
    """Look at the state and run what it calls for, now (blocks until the rollout ends);
    409 while another step runs."""
    model = await run_in_threadpool(lambda: services.loop.step(wait=False))
    return {"model": model.model_dump(mode="json") if model else None}


@router.post("/retry")
def retry(services: Services) -> dict[str, Any]:
    """Forget stopped rollouts and held triggers, so they may fire again (after a person
    looked)."""
    return {"cleared": services.loop.retry()}
