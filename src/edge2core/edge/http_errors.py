"""How the edge's HTTP door refuses: reason codes, their status, the one error body, and the
guard that turns a bug into `500 internal_error`.

Every refusal is JSON `{"error": code, "detail": message}` (schema `ErrorBody`), never a
traceback or a server path; a bug is logged with its traceback.
"""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request

from edge2core.common.errors import describe_validation
from edge2core.common.identifiers import InvalidIdentifier
from edge2core.common.logging import get_logger
from edge2core.edge.gateway import error_reason
from edge2core.edge.http_body import BODY_DONE, DoorRefusal

log = get_logger(__name__)

STATUS = {
    "too_large": 413,
    "unsupported_format": 415,
    "not_an_image": 415,
    "spool_full": 507,
    "no_model": 503,
    "overloaded": 503,
    "rate_limited": 429,
    "wrong_site": 403,
    "unknown_device": 401,
    "revoked_device": 403,
    "wrong_device": 403,
    "wrong_role": 403,
    "internal_error": 500,
    "not_found": 404,
    "method_not_allowed": 405,
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class ErrorBody(BaseModel):
    """Every refusal, whatever the route and status."""

    error: str = Field(description="a stable reason code, e.g. `too_large`", examples=["too_large"])
    detail: str = Field(description="what was wrong, for a person")


def reason_of(exc: Exception) -> str:
    if isinstance(exc, DoorRefusal | InvalidIdentifier):
        return exc.reason
    return error_reason(exc)


def detail_of(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation(exc.errors(include_url=False))
    return str(exc)[:1000] or type(exc).__name__


def _body_announced(request: Request) -> bool:
    headers = request.headers
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length not in ("", "0")


def error_response(request: Request, reason: str, detail: str, status: int,
                   retry_after_s: float | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    if reason == "unknown_device":
        headers["WWW-Authenticate"] = "Bearer"
    # A body left unread on purpose (over the limit, or one an `Expect: 100-continue` client is
    # holding back) is not read afterwards either: the connection closes with the answer.
    if not request.scope.get(BODY_DONE) and (status == 413 or (
        _body_announced(request) and request.headers.get("expect", "").lower() == "100-continue"
    )):
        headers["Connection"] = "close"
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)
