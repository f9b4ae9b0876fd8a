"""The core's routes beyond the skeleton's: resumable uploads, datasets, labelling, governance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from edge2core.core.api.app import CoreServices


def core_routes(services: CoreServices) -> APIRouter:
    from edge2core.core.api.datasets import (
        datasets_router,
        governance_router,
        labelling_router,
    )
    from edge2core.core.api.uploads import uploads_router

    router = APIRouter()
    router.include_router(uploads_router(services))
    router.include_router(datasets_router(services))
    router.include_router(labelling_router(services))
    router.include_router(governance_router(services))
    return router
