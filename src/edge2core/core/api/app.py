"""The core's HTTP API: wiring only. Routes live in `routers/` (one module per resource),
errors become answers in `errors.py`, the document is shaped in `openapi.py`, who may call
what is `access.py`, and the one-shot upload's hot path is `fast_put.py`."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from edge2core.common.metrics import mount_metrics
from edge2core.core.api.access import AdminAccess, SiteRateLimit, token_required
from edge2core.core.api.deps import CoreServices
from edge2core.core.api.errors import install_error_handling
from edge2core.core.api.fast_put import ImagePutFastPath
from edge2core.core.api.openapi import document_core_api
from edge2core.core.api.routers import (
    audit,
    automation,
    catalogue,
    catalogue_signed,
    datasets,
    governance,
    health,
    images,
    labelling,
    legacy_catalogue,
    models,
    photos,
    signing,
    sites,
    training,
    uploads,
)
from edge2core.web.auth.users import UserStore
from edge2core.web.dashboard.mount import mount_dashboard

__all__ = ["CoreServices", "create_core_app"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router, images.router, uploads.router, photos.router, datasets.router, labelling.router,
    governance.router, training.router, models.router, signing.router, sites.router,
    catalogue.router, catalogue_signed.router, legacy_catalogue.router, audit.router, automation.router,
)
DESCRIPTION = (
    "The core of edge2core. Every error is JSON `{\"error\": code, \"detail\": message}` "
    "(the `Error` schema); requests that do not fit the schema are answered 422 `invalid`.")


def create_core_app(services: CoreServices, users: UserStore | None = None) -> FastAPI:
    """The app over `services`. Middleware, outermost first: the catch-all 500, who may call
    what, the one-shot upload's fast path; then the routers, and the people's dashboard
    (`web/dashboard`, signed in with `users`; nobody can sign in without them)."""
    app = FastAPI(title="edge2core core", version="0.1.0", description=DESCRIPTION)
    app.state.services = services  # what `deps.Services` hands each route
    mount_metrics(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_dashboard(app, services, users or UserStore())
    app.add_middleware(ImagePutFastPath, receiver=services.receiver,
                       site_tokens=services.site_tokens)
    app.add_middleware(SiteRateLimit, limit=services.site_rate, site_tokens=services.site_tokens)
    app.add_middleware(AdminAccess, admin_token=services.admin_token,
                       site_tokens=services.site_tokens, api_tokens=services.api_tokens)
    install_error_handling(app)  # adds the catch-all: after every other middleware
    document_core_api(app, lambda method, path: token_required(
        method, path, admin_token=services.admin_token, site_tokens=services.site_tokens))
    return app
