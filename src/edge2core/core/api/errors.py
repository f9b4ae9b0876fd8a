"""The one place where the core's errors become HTTP answers.

Every error is JSON `{"error": code, "detail": message}` (`Error`): a stable code (`not_found`,
`invalid`, `unauthorized`, ...) and a message for people. Domain code raises the families of
`common.errors` (or subclasses naming a finer code) and never knows about HTTP; `status_of`
maps them to a status here. A request that does not fit the schema (a missing field, a wrong
type, an integer out of range, a body that is not JSON) is answered `422` with code `invalid`
(the status FastAPI uses): `detail` says where and what in one line, as every other `detail`
does, and `issues` lists what does not fit (`loc`, `msg`, `type`; never the input). A gate refusal adds its `report`. An
unexpected failure is answered `500` `internal_error` and logged with its traceback; no error
body carries a traceback, a file path or a line number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge2core.common.asgi_guard import InternalErrorGuard
from edge2core.common.errors import (
    Busy,
    Conflict,
    DomainError,
    Invalid,
    NotFound,
    TooLarge,
    Unauthorised,
    Unsupported,
    describe_validation,
)
from edge2core.common.identifiers import InvalidIdentifier
from edge2core.common.logging import get_logger
from edge2core.core.deliver.registry import GateBlocked, dump_report

log = get_logger(__name__)

FAMILY_STATUS: dict[type[DomainError], int] = {
    NotFound: 404, Conflict: 409, Invalid: 422, TooLarge: 413, Unsupported: 415,
    Unauthorised: 401, Busy: 503,
}
# Codes answered with another status than their family's: statuses that edges, stock tus
# clients and scripts key on since before the vocabulary (the edge's forwarder reads 423 as
# "out of step, ask where the upload is"; a malformed request header has always been 400).
CODE_STATUS: dict[str, int] = {
    "bad_request": 400, "bad_metadata": 400, "bad_id": 400, "no_length": 400,
    "bad_length": 400, "no_offset": 400, "bad_offset": 400, "client_gone": 400,
    "forbidden": 403, "tus_version": 412, "range_not_satisfiable": 416, "upload_busy": 423,
    "internal_error": 500,
}
# The code of a status nothing more precise names (framework answers: 404 no such route, 405).
CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 410: "gone",
    411: "length_required", 412: "precondition_failed", 413: "too_large",
    415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "invalid",
    423: "locked", 428: "precondition_required", 429: "too_many_requests",
    500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "timeout",
}


class Issue(BaseModel):
    """One way a request does not fit the schema."""

    loc: list[str | int] = Field(description="where: body, query, path or header, then names")
    msg: str
    type: str


class Error(BaseModel):
    """Every error the core answers."""

    model_config = ConfigDict(extra="allow", title="Error")

    error: str = Field(description="a stable code: not_found, invalid, unauthorized, ...")
    detail: str = Field(description="what went wrong, for people")
    issues: list[Issue] | None = Field(
        default=None, description="for a request that does not fit the schema (422 invalid): "
                                  "each place that does not fit")


def status_of(exc: DomainError) -> int:
    """The status for a refusal: its code's if that predates the vocabulary, else its
    family's (a bare `DomainError` is a 500)."""
    if exc.code in CODE_STATUS:
        return CODE_STATUS[exc.code]
    return next((FAMILY_STATUS[k] for k in type(exc).__mro__ if k in FAMILY_STATUS), 500)


def headers_of(exc: DomainError) -> dict[str, str]:
    """Headers a refusal carries: its own `headers` if it has any (`Tus-Version`), where a
    resumable upload stands (`offset`: `Upload-Offset`), when to come back (`retry_after_s`:
    `Retry-After`, whole seconds)."""
    extra = getattr(exc, "headers", None)
    headers = {str(k): str(v) for k, v in extra.items()} if isinstance(extra, Mapping) else {}
    offset = getattr(exc, "offset", None)
    if isinstance(offset, int):
        headers["Upload-Offset"] = str(offset)
    retry = getattr(exc, "retry_after_s", None)
    if isinstance(retry, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return headers


def error_response(status: int, code: str | None, detail: str,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error body."""
    body = {"error": code or CODES.get(status, "error"), "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def refusal_response(exc: DomainError, headers: Mapping[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    """A refusal as its answer; `headers` (the route's) go under the refusal's own."""
    return error_response(status_of(exc), exc.code, exc.detail,
                          {**(headers or {}), **headers_of(exc)}, **extra)


def issues(found: Iterable[Any]) -> list[dict[str, Any]]:
    """Validation errors as `Issue`s: where, what, which rule; not the input (it may be big,
    or what the caller should not see again)."""
    return [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in found]


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
MethodTable = list[tuple[bool, re.Pattern[str], set[str]]]


def _path_regex(template: str, item: dict[str, Any]) -> re.Pattern[str]:
    """A path template of the document as a regex: an integer parameter matches digits only."""
    integers = {p["name"] for op in item.values() if isinstance(op, dict)
                for p in op.get("parameters", [])
                if p.get("in") == "path" and p.get("schema", {}).get("type") == "integer"}

    def parameter(match: re.Match[str]) -> str:
        return "[0-9]+" if match.group(1) in integers else "[^/]+"

    return re.compile(re.sub(r"\\\{([^/]+?)\\\}", parameter, re.escape(template)))


def _method_table(app: FastAPI) -> MethodTable:
    """(literal path?, path regex, methods) per path of the API document, built once."""
    table: MethodTable | None = getattr(app.state, "allowed_methods", None)
    if table is not None:
        return table
    table = []
    for template, item in app.openapi().get("paths", {}).items():
        methods = {m.upper() for m in item if m.upper() in HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        table.append(("{" not in template, _path_regex(template, item), methods))
    app.state.allowed_methods = table
    return table


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API document lists at this path (HEAD wherever GET is), or [] for a
    path it does not list. Starlette's 405 names only the first matching route's methods,
    while each method is a route of its own here. As in OpenAPI, a concrete path
    (`/v1/models/rollback`) wins over a templated one (`/v1/models/{version}`), and an
    integer parameter matches digits only."""
    matches = [(literal, methods) for literal, regex, methods in _method_table(app)
               if regex.fullmatch(path)]
    if any(literal for literal, _methods in matches):
        matches = [(literal, methods) for literal, methods in matches if literal]
    return sorted(set().union(*(methods for _literal, methods in matches)))


BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's 400 detail


def framework_error(app: FastAPI, request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """What the framework itself refuses (no route, wrong method, a body that is not JSON)."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (methods := allowed_methods(app, request.url.path)):
        headers["Allow"] = ", ".join(methods)
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such route"
    if exc.status_code == 400 and detail == BODY_NOT_PARSED:
        # A body that is not JSON at all: a request that does not fit its schema, answered
        # like every other (422 invalid).
        return error_response(422, "invalid", "body: not valid JSON", headers,
                              issues=[{"loc": ["body"], "msg": "not valid JSON", "type": "json_invalid"}])
    return error_response(exc.status_code, None, detail, headers)


def install_error_handling(app: FastAPI) -> None:
    """One handler per kind of error, each answering the one body; the catch-all goes
    outermost (call this after adding every other middleware). Handlers are found by the
    exception's class hierarchy, so one per family covers every domain subclass."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return framework_error(app, request, exc)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        found = exc.errors()
        return error_response(422, "invalid", describe_validation(found), issues=issues(found))

    async def refused(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        return refusal_response(exc)

    async def gate_blocked(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GateBlocked)
        return error_response(409, "gate_failed", str(exc), report=dump_report(exc.report))

    async def invalid_id(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidIdentifier)
        return error_response(422, exc.reason, str(exc))

    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        # Lookups in domain code that raise a plain LookupError (or KeyError) rather than
        # NotFound: the registry's and the datasets' `get`, a missing object in the store.
        return error_response(404, "not_found", str(exc.args[0] if exc.args else exc))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(DomainError, refused)
    app.add_exception_handler(GateBlocked, gate_blocked)
    app.add_exception_handler(InvalidIdentifier, invalid_id)
    app.add_exception_handler(LookupError, not_found)
    app.add_middleware(InternalErrorGuard, role="core")
