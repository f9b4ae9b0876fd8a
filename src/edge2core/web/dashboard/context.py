"""What every dashboard route works with: the core's services, the accounts and sessions,
and one way to render a page (with the signed-in person and their CSRF token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from edge2core.core.api.deps import CoreServices
from edge2core.web.assets import TEMPLATES
from edge2core.web.auth.sessions import Session, SessionStore, check_csrf
from edge2core.web.auth.users import Role, UserStore

NAV = (("fleet", "/dashboard", "Fleet"), ("pipeline", "/dashboard/pipeline", "Pipeline"),
       ("datasets", "/dashboard/datasets", "Datasets"), ("models", "/dashboard/models", "Models"),
       ("labelling", "/dashboard/labelling", "Labelling"),
       ("catalogue", "/dashboard/catalogue", "Catalogue"))


@dataclass
class Dashboard:
    """Set on `app.state.dashboard` by `mount_dashboard`."""

    services: CoreServices
    users: UserStore
    sessions: SessionStore

    def page(self, request: Request, template: str, session: Session | None, active: str = "",
             status_code: int = 200, **values: Any) -> HTMLResponse:
        user = session.user if session else None
        return TEMPLATES.TemplateResponse(request, template, {
            "nav": NAV, "active": active, "user": user,
            "csrf": session.csrf if session else "",
            "is_admin": bool(user and user.role == Role.ADMIN), **values,
        }, status_code=status_code)


async def dashboard_of(request: Request) -> Dashboard:
    dashboard = request.app.state.dashboard
    assert isinstance(dashboard, Dashboard), "mount_dashboard sets app.state.dashboard"
    return dashboard


Board = Annotated[Dashboard, Depends(dashboard_of)]


async def reader(request: Request, board: Board) -> Session:
    """A signed-in person (admin or labeller): may read every page."""
    return board.sessions.require(request, Role.LABELLER)


async def labeller(request: Request, board: Board) -> Session:
    """A signed-in person sending a change a labeller may make; the CSRF token checked."""
    session = board.sessions.require(request, Role.LABELLER)
    await _csrf(request, session)
    return session


async def admin(request: Request, board: Board) -> Session:
    """An admin sending a change; the CSRF token checked first, then the role."""
    session = board.sessions.of(request)
    await _csrf(request, session)
    return board.sessions.require(request, Role.ADMIN)


async def _csrf(request: Request, session: Session | None) -> None:
    presented = request.headers.get("x-csrf-token")
    if presented is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        presented = str((await request.form()).get("csrf") or "") or None
    check_csrf(session, presented)


Reader = Annotated[Session, Depends(reader)]
Labeller = Annotated[Session, Depends(labeller)]
Admin = Annotated[Session, Depends(admin)]


def who(session: Session) -> str:
    """The name changes are recorded under (audit, labelling, catalogue)."""
    assert session.user is not None
    return session.user.name
