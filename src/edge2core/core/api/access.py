"""Who may use the core's HTTP API: per-site upload tokens and the admin token."""

from __future__ import annotations

import hmac
import math
import re
import secrets
from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from edge2core.common.rate_limit import RateLimit, RateLimited, RateLimiter
from edge2core.common.site_tokens import tokens_of
from edge2core.common.tls_http import TLS_SCOPE_KEY, peer_identity
from edge2core.core.api.token_store import TokenStore


def site_token_ok(tokens: Mapping[str, str], site: str | None, authorization: str | None) -> bool:
    """True when no tokens are configured (development), or the header carries `site`'s token
    (any site's, when `site` is None). A site without a token is never admitted; a value
    "OLD,NEW" admits both (a rotation, `common/site_tokens`)."""
    if not tokens:
        return True
    if not authorization or not authorization.startswith("Bearer "):
        return False
    presented = authorization.removeprefix("Bearer ")
    values = tokens.values() if site is None else [tokens[site]] if site in tokens else []
    candidates = [t for value in values for t in tokens_of(value)]
    return any(hmac.compare_digest(presented.encode(), t.encode()) for t in candidates)


# What an edge site reads from the core with its own token (see edge/core_client.py).
SITE_READS = re.compile(
    r"^/v1/(sites/[^/]+/model|models/\d+/(artifact|signature)|signing-key|catalogue/products|catalogue/signed"
    r"|images/[0-9a-f]{64})$")
OPEN_PATHS = ("/healthz", "/metrics")
# The people's dashboard signs people in itself (web/dashboard: sessions, roles, CSRF).
WEB_PREFIXES = ("/dashboard", "/static/")


def _is_upload(method: str, path: str) -> bool:
    """The upload routes check the site's token themselves (direct uploads to S3 included:
    their grants and commits are rate-limited as uploads)."""
    return ((method == "PUT" and path.startswith("/v1/images/"))
            or path.startswith(("/v1/uploads", "/v1/photos/")))


def access_allowed(method: str, path: str, authorization: str | None, *, admin_token: str | None,
                   site_tokens: Mapping[str, str]) -> bool:
    """Pure: may this request reach the core's API? Uploads are left to the upload routes
    (the site's own token); health and metrics are open; a site's token reads what an edge
    needs (its model, signatures, the catalogue, whether a photo arrived: HEAD only);
    everything else takes the admin token. With no admin token everything is open, as in
    development."""
    if (admin_token is None or _is_upload(method, path) or path in OPEN_PATHS or path == "/"
            or path.startswith(WEB_PREFIXES)):
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


def token_site(tokens: Mapping[str, str], authorization: str | None) -> str | None:
    """The site whose token `authorization` carries, if any."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    presented = authorization.removeprefix("Bearer ").encode()
    return next((site for site, value in tokens.items() for token in tokens_of(value)
                 if hmac.compare_digest(presented, token.encode())), None)


def site_cert_ok(method: str, path: str, authorization: str | None, peer: Mapping[str, str] | None,
                 *, admin_token: str | None, site_tokens: Mapping[str, str]) -> bool:
    """Pure, for requests that came over the core's TLS: what a site does (uploads, and reads
    with a site token) needs the site's own certificate (mutual TLS, the token a second
    factor): a certificate of a site, of the very site whose token is presented. The handshake
    already refused certificates that are unknown, expired or revoked. Admin requests and
    everything else need none (people's browsers have no certificates)."""
    if admin_token is not None and site_token_ok({"admin": admin_token}, "admin", authorization):
        return True
    site = token_site(site_tokens, authorization)
    if site is None and not (_is_upload(method, path) and method != "OPTIONS"):
        return True
    if peer is None or peer.get("ou") != "site":
        return False
    return site is None or peer.get("cn") == site


# API tokens' scopes (`token_store`), widest last; `admin` may do everything. A person's web
# session can be given the same scopes by role and checked with `scope_allows`.
SCOPES = ("read", "label", "operate", "admin")
_OPERATE = ("/v1/training", "/v1/automation", "/v1/datasets", "/v1/models")


def required_scope(method: str, path: str) -> str:
    """Pure: the scope a request needs. Reads need `read` (photo bytes: `admin`); labelling
    decisions `label`; datasets, training, the model registry and the loop `operate`;
    everything else that changes things (catalogue, governance, signing, sites) `admin`."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "admin" if path.startswith("/v1/images/") and method == "GET" else "read"
    if path.startswith("/v1/labelling/"):
        return "label"
    if path.startswith(_OPERATE):
        return "operate"
    return "admin"


def scope_allows(scopes: tuple[str, ...] | list[str], method: str, path: str) -> bool:
    """Pure: do `scopes` cover this request? Every scope reads; `admin` does everything."""
    need = required_scope(method, path)
    return "admin" in scopes or need in scopes or (need == "read" and bool(scopes))


class AdminAccess:
    """ASGI middleware applying `access_allowed` and API tokens' scopes; refusals are 401
    (no or unknown token) or 403 (a token whose scopes do not cover it), with a JSON body."""

    def __init__(self, app: ASGIApp, admin_token: str | None,
                 site_tokens: Mapping[str, str], api_tokens: TokenStore | None = None) -> None:
        self.app = app
        self._admin = admin_token
        self._sites = site_tokens
        self._tokens = api_tokens
        # With API tokens issued and no admin token, the API is closed all the same: a secret
        # nobody holds stands in for the admin token.
        self._nobody = secrets.token_urlsafe(32)

    def _token_scopes(self, authorization: str | None) -> tuple[str, ...] | None:
        """The scopes of a live API token in `authorization`, else None."""
        if self._tokens is None or not authorization or not authorization.startswith("Bearer e2c_"):
            return None
        return self._tokens.scopes_of(authorization.removeprefix("Bearer "))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = next((v.decode("latin-1") for k, v in scope["headers"]
                                  if k == b"authorization"), None)
            scopes = self._token_scopes(authorization)
            if scopes is not None:
                if not scope_allows(scopes, scope["method"], scope["path"]):
                    need = required_scope(scope["method"], scope["path"])
                    await JSONResponse(
                        {"error": "forbidden",
                         "detail": f"this token's scopes ({', '.join(scopes)}) do not include {need!r}"},
                        status_code=403)(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return
            admin = self._admin
            if admin is None and self._tokens is not None and self._tokens.list():
                admin = self._nobody
            if TLS_SCOPE_KEY in scope.get("extensions", {}) and not site_cert_ok(
                    scope["method"], scope["path"], authorization, peer_identity(scope),
                    admin_token=self._admin, site_tokens=self._sites):
                response = JSONResponse(
                    {"error": "unauthorized",
                     "detail": "a site must present its own certificate (mutual TLS) with its token"},
                    status_code=401)
                await response(scope, receive, send)
                return
            if not access_allowed(scope["method"], scope["path"], authorization,
                                  admin_token=admin, site_tokens=self._sites):
                response = JSONResponse(
                    {"error": "unauthorized",
                     "detail": "this needs the core's admin token (Authorization: Bearer ...); "
                               "reads also take a site's token"}, status_code=401,
                    headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SiteRateLimit:
    """ASGI middleware: each site's uploads (requests and bytes, `Content-Length`) within its
    `RateLimit`; beyond it, 429 `rate_limited` with `Retry-After`, counted. Runs after
    `AdminAccess`, so only a site's own authenticated traffic spends its allowance. Without
    site tokens (development), the client's address stands for the site."""

    def __init__(self, app: ASGIApp, limit: RateLimit | None, site_tokens: Mapping[str, str]) -> None:
        self.app = app
        self._limiter = RateLimiter(limit, "site") if limit is not None and limit.enabled else None
        self._sites = site_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._limiter is not None and scope["type"] == "http" \
                and _is_upload(scope["method"], scope["path"]) and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            client = scope.get("client") or ("?", 0)
            site = token_site(self._sites, authorization) or f"address:{client[0]}"
            length = headers.get(b"content-length", b"0")
            try:
                self._limiter.check(site, int(length) if length.isdigit() else 0, "core-upload")
            except RateLimited as exc:
                wait = exc.retry_after_s or 1.0
                response = JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=429,
                                        headers={"Retry-After": str(max(1, math.ceil(wait)))})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
