"""Server-side sessions for the dashboard, each with its own CSRF token.

A session id is 256 random bits in an HttpOnly, SameSite=Lax cookie; the session itself (who,
role, CSRF token, expiry) stays in this process's memory, so a restart signs everyone out and
no secret ever reaches a page except the session's own CSRF token, which every state-changing
request must send back (form field `csrf` or header `X-CSRF-Token`). Signing in replaces the
session (a fixed id never carries over a login).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from edge2core.common.errors import Unauthorised
from edge2core.web.auth.users import Role, User

COOKIE = "e2c_session"
CSRF_HEADER = "x-csrf-token"


class SignInNeeded(Unauthorised):
    """No signed-in session: pages answer with a redirect to the sign-in page."""

    code = "sign_in_needed"


@dataclass
class Session:
    id: str
    csrf: str
    expires_at: float
    user: User | None = None
    created_at: float = field(default_factory=time.time)


class SessionStore:
    """Sessions in memory, each living `ttl_s` seconds from its last use."""

    def __init__(self, ttl_s: float = 8 * 3600, secure_cookie: bool = False) -> None:
        self._ttl = ttl_s
        self._secure = secure_cookie
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _new(self, user: User | None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                          time.time() + self._ttl, user)
        with self._lock:
            self._forget_expired()
            self._sessions[session.id] = session
        return session

    def _forget_expired(self) -> None:
        now = time.time()
        for sid in [s for s, v in self._sessions.items() if v.expires_at < now]:
            del self._sessions[sid]

    def of(self, request: Request) -> Session | None:
        """The request's live session, if any (its expiry pushed back)."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or session.expires_at < time.time():
                self._sessions.pop(sid, None)
                return None
            session.expires_at = time.time() + self._ttl
            return session

    def visitor(self, request: Request) -> tuple[Session, bool]:
        """The visitor's session and whether it is new (then `set_cookie` it on the answer):
        one is made, not signed in, when there is none; the sign-in form's CSRF token lives in
        it."""
        session = self.of(request)
        return (session, False) if session is not None else (self._new(None), True)

    def sign_in(self, request: Request, response: Response, user: User) -> Session:
        """A new session for `user`; the visitor's old one (if any) ends."""
        self.end(request, response)
        session = self._new(user)
        self.set_cookie(request, response, session)
        return session

    def end(self, request: Request, response: Response) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)
        response.delete_cookie(COOKIE, path="/")

    def set_cookie(self, request: Request, response: Response, session: Session) -> None:
        """The session's cookie: HttpOnly, SameSite=Lax, and Secure over HTTPS."""
        response.set_cookie(COOKIE, session.id, max_age=int(self._ttl), path="/", httponly=True,
                            samesite="lax", secure=self._secure or request.url.scheme == "https")

    def require(self, request: Request, role: Role = Role.LABELLER) -> Session:
        """The signed-in session allowed `role`; raises `SignInNeeded` (no session) or
        `Unauthorised` with code `forbidden` (signed in, but the role may not)."""
        session = self.of(request)
        if session is None or session.user is None:
            raise SignInNeeded("sign in first")
        if not session.user.may(role):
            raise Unauthorised(f"{session.user.name} is a {session.user.role.value}; this needs "
                               f"an {role.value}", code="forbidden")
        return session


def check_csrf(session: Session | None, presented: str | None) -> None:
    """Raises `Unauthorised` (`csrf_failed`, 403) unless `presented` is the session's token."""
    if session is None or not presented or not secrets.compare_digest(
            presented.encode(), session.csrf.encode()):
        raise Unauthorised("this form did not come from this session's page (CSRF token "
                           "missing or wrong): reload the page and try again", code="forbidden")
