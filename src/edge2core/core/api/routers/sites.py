"""Edge sites as the core sees them: what model a site should run (the HTTP twin of the
`e2c-deploy` KV bucket, for sites without a leaf link), the latest report of every site, and
why a site runs its model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool

from edge2core.common.errors import NotFound
from edge2core.common.events import ModelPublished
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors
from edge2core.core.api.params import SiteId

router = APIRouter(prefix="/v1/sites", tags=["sites"])


@router.get("")
def site_reports(services: Services) -> dict[str, Any]:
    """The latest model report of every site (live, refused, rolled back)."""
    return {"sites": services.reports.all()}


@router.get("/{site}/model", responses=errors(404))
def site_model(services: Services, site: str = Path(max_length=64)) -> ModelPublished:
    """What a site should run (a canary targeting it, else production). (A lookup: any name
    is answered, `-` by an edge that does not know its id yet.)"""
    model = services.registry.desired_for(site)
    if model is None:
        raise NotFound("no model is in production yet")
    return model.published()


@router.get("/{site}/why", responses=errors(404))
async def why(site: SiteId, services: Services) -> dict[str, Any]:
    """Why is this model at this site: target, dataset, trigger, gate, rollout."""
    result: dict[str, Any] = await run_in_threadpool(services.loop.explain, site)
    return result
