"""The last line of every HTTP app: an exception nothing else answered becomes
`500 {"error": "internal_error", "detail": ...}`, logged once with its traceback and an incident
id the answer repeats, so no request ever sees a traceback or a path and the server keeps
serving. Both roles' apps add it (`core/api/errors.py`, `edge/http_errors.py`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge2core.common.logging import get_logger

log = get_logger(__name__)


class InternalErrorGuard:
    """ASGI middleware. `role` names the server in the answer ("core", "edge"); `on_error` is
    called once per answered failure (e.g. to count it)."""

    def __init__(self, app: ASGIApp, role: str = "server",
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self._role = role
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            log.info("client went away mid-request", method=scope.get("method"),
                     path=scope.get("path"))
        except Exception:
            incident = secrets.token_hex(4)
            log.exception("request failed", incident=incident, method=scope.get("method"),
                          path=scope.get("path"))
            if started:
                return  # half an answer went out: only closing the connection is left
            self._on_error()
            body = {"error": "internal_error",
                    "detail": f"the {self._role} failed to handle this request (incident "
                              f"{incident}); its log has the details"}
            await JSONResponse(body, status_code=500, headers={"Connection": "close"})(
                scope, receive, send)
