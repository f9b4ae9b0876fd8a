"""Mount the dashboard on the core's app (`create_core_app`)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from edge2core.core.api.deps import CoreServices
from edge2core.web.assets import mount_static
from edge2core.web.auth.sessions import SessionStore, SignInNeeded
from edge2core.web.auth.users import UserStore
from edge2core.web.dashboard import actions, live, login, pages
from edge2core.web.dashboard.context import Dashboard

# What the core's token middleware leaves to the dashboard's own sign-in (see core/api/access.py).
WEB_PREFIXES = ("/dashboard", "/static/")


def mount_dashboard(app: FastAPI, services: CoreServices, users: UserStore,
                    sessions: SessionStore | None = None) -> None:
    """Add the dashboard's routes (none in the OpenAPI document) and static files to `app`."""
    app.state.dashboard = Dashboard(services, users, sessions or SessionStore())
    for router in (login.router, pages.router, actions.router, live.router):
        app.include_router(router)
    mount_static(app)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=307)

    @app.exception_handler(SignInNeeded)
    async def sign_in(request: Request, exc: SignInNeeded) -> Response:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/dashboard/login?next={quote(target)}", status_code=303)
        return JSONResponse({"error": "unauthorized", "detail": str(exc)}, status_code=401)
