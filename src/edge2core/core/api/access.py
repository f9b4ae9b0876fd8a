"""Who may use the core's HTTP API: per-site upload tokens and the admin token."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


def site_token_ok(tokens: Mapping[str, str], site: str | None, authorization: str | None) -> bool:
    """True when no tokens are configured (development), or the header carries `site`'s token
    (any site's, when `site` is None). A site without a token is never admitted."""
    if not tokens:
        return True
    if not authorization or not authorization.startswith("Bearer "):
        return False
    presented = authorization.removeprefix("Bearer ")
    candidates = tokens.values() if site is None else [tokens[site]] if site in tokens else []
    return any(hmac.compare_digest(presented.encode(), t.encode()) for t in candidates)


# What an edge site reads from the core with its own token (see edge/core_client.py).
SITE_READS = re.compile(
    r"^/v1/(sites/[^/]+/model|models/\d+/(artifact|signature)|signing-key|catalogue/products"
    r"|images/[0-9a-f]{64})$")
OPEN_PATHS = ("/healthz", "/metrics")


def _is_upload(method: str, path: str) -> bool:
    """The upload routes check the site's token themselves."""
    return (method == "PUT" and path.startswith("/v1/images/")) or path.startswith("/v1/uploads")


def access_allowed(method: str, path: str, authorization: str | None, *, admin_token: str | None,
                   site_tokens: Mapping[str, str]) -> bool:
    """Pure: may this request reach the core's API? Uploads are left to the upload routes
    (the site's own token); health and metrics are open; a site's token reads what an edge
    needs (its model, signatures, the catalogue, whether a photo arrived: HEAD only);
    everything else takes the admin token. With no admin token everything is open, as in
    development."""
    if admin_token is None or _is_upload(method, path) or path in OPEN_PATHS:
        return True
    if site_token_ok({"admin": admin_token}, "admin", authorization):
        return True
    if path.startswith("/v1/images/") and method != "HEAD":
        return False  # photo bytes: the admin's only
    return (method in ("GET", "HEAD") and bool(SITE_READS.match(path))
            and site_token_ok(site_tokens, None, authorization))


def token_required(method: str, path: str, *, admin_token: str | None,
                   site_tokens: Mapping[str, str]) -> bool:
    """Pure: is a request without a token refused here (by this middleware, or by the upload
    routes with their site tokens)? `path` may be a route template (`/v1/models/{version}`)."""
    if _is_upload(method, path):
        return bool(site_tokens) and method != "OPTIONS"  # tus discovery is open
    return not access_allowed(method, path, None, admin_token=admin_token,
                              site_tokens=site_tokens)


class AdminAccess:
    """ASGI middleware applying `access_allowed`; refusals are 401 with a JSON body."""

    def __init__(self, app: ASGIApp, admin_token: str | None,
                 site_tokens: Mapping[str, str]) -> None:
        self.app = app
        self._admin = admin_token
        self._sites = site_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = next((v.decode("latin-1") for k, v in scope["headers"]
                                  if k == b"authorization"), None)
            if not access_allowed(scope["method"], scope["path"], authorization,
                                  admin_token=self._admin, site_tokens=self._sites):
                response = JSONResponse(
                    {"error": "unauthorized",
                     "detail": "this needs the core's admin token (Authorization: Bearer ...); "
                               "reads also take a site's token"}, status_code=401,
                    headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
