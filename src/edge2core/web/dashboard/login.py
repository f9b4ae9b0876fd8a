"""Signing in and out of the dashboard."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edge2core.common.logging import get_logger
from edge2core.web.auth.sessions import check_csrf
from edge2core.web.dashboard.context import Board

log = get_logger(__name__)
router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never an open redirect to another site."""
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        return target
    return "/dashboard"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, board: Board, next: str = "/dashboard") -> Response:
    session, new = board.sessions.visitor(request)
    page = board.page(request, "dashboard/login.html", session, next=_safe_next(next), error="")
    if new:
        board.sessions.set_cookie(request, page, session)
    return page


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, board: Board, name: str = Form(""), password: str = Form(""),
                csrf: str = Form(""), next: str = Form("/dashboard")) -> Response:
    check_csrf(board.sessions.of(request), csrf)
    user = await run_in_threadpool(board.users.authenticate, name, password)
    if user is None:
        log.warning("dashboard sign-in refused", name=name[:64])
        return board.page(request, "dashboard/login.html", board.sessions.of(request),
                          next=_safe_next(next), error="Wrong name or password.", status_code=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    board.sessions.sign_in(request, response, user)
    log.info("dashboard sign-in", name=user.name, role=user.role.value)
    return response


@router.post("/logout")
async def logout(request: Request, board: Board, csrf: str = Form("")) -> Response:
    check_csrf(board.sessions.of(request), csrf)
    response = RedirectResponse("/dashboard/login", status_code=303)
    board.sessions.end(request, response)
    return response
