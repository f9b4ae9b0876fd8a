"""What every route of the core's HTTP API shares: one error body, the handlers that make every
error that body, and an OpenAPI document that says what the core really answers.

Every error is JSON `{"error": code, "detail": message}` (`Error`): a stable code (`not_found`,
`invalid`, `unauthorized`, ...) and a message for people. A request that does not fit the
schema (a missing field, a wrong type, an integer out of range, a body that is not JSON) is
answered `422` with code `invalid` (the status FastAPI uses), and there `detail` is, as in
FastAPI's own answer, the list of what does not fit (`loc`, `msg`, `type`; never the input).
Some errors add fields (`report` on a gate refusal). An unexpected failure is answered `500`
`internal_error` and logged with its traceback; no error body carries a traceback, a file path
or a line number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge2core.common.identifiers import InvalidIdentifier
from edge2core.common.logging import get_logger

log = get_logger(__name__)

# Versions, ids and counts the core keeps in 32-bit integer columns (PostgreSQL `integer`):
# a bigger number can name nothing, and is refused before it reaches the database.
INT32_MAX = 2**31 - 1
Version = Annotated[int, Path(ge=1, le=INT32_MAX, description="a version number (1, 2, ...)")]


class Issue(BaseModel):
    """One way a request does not fit the schema."""

    loc: list[str | int] = Field(description="where: body, query, path or header, then names")
    msg: str
    type: str


class Error(BaseModel):
    """Every error the core answers."""

    model_config = ConfigDict(extra="allow", title="Error")

    error: str = Field(description="a stable code: not_found, invalid, unauthorized, ...")
    detail: str | list[Issue] = Field(
        description="what went wrong, for people; for a request that does not fit the schema "
                    "(422 invalid), the list of what does not fit")


CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 410: "gone",
    411: "length_required", 412: "precondition_failed", 413: "too_large",
    415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "invalid",
    423: "locked", 428: "precondition_required", 429: "too_many_requests",
    500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "timeout",
}
DESCRIPTIONS = {
    400: "Bad request", 401: "No valid token (Authorization: Bearer ...)",
    404: "Not found", 409: "Conflict with the current state", 413: "Too large",
    415: "Unsupported media type", 416: "Range not satisfiable",
    422: "Invalid request: the body, a parameter or a value does not fit",
    500: "Internal error (logged with its traceback at the core)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each of these statuses answered with `Error`."""
    return {code: {"model": Error, "description": DESCRIPTIONS.get(code, CODES.get(code, "Error"))}
            for code in codes}


def error_response(status: int, code: str | None, detail: str | list[dict[str, Any]],
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"error": code or CODES.get(status, "error"), "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def issues(found: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as `Issue`s: where, what, which rule; not the input (it may be big,
    or what the caller should not see again)."""
    return [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in found]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API document lists at this path (HEAD wherever GET is), or [] for a
    path it does not list. Starlette's 405 names only the first matching route's methods,
    while each method is a route of its own here. As in OpenAPI, a concrete path
    (`/v1/models/rollback`) wins over a templated one (`/v1/models/{version}`), and an
    integer parameter matches digits only."""
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, item in app.openapi().get("paths", {}).items():
            integers = {p["name"] for op in item.values() if isinstance(op, dict)
                        for p in op.get("parameters", [])
                        if p.get("in") == "path" and p.get("schema", {}).get("type") == "integer"}
            pattern = re.sub(r"\\\{([^/]+?)\\\}",
                             lambda m: "[0-9]+" if m.group(1) in integers else "[^/]+",
                             re.escape(template))
            methods = {m.upper() for m in item if m.upper() in HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            table.append(("{" not in template, re.compile(pattern), methods))
        app.state.allowed_methods = table
    matches = [(literal, methods) for literal, regex, methods in table if regex.fullmatch(path)]
    if any(literal for literal, _methods in matches):
        matches = [(literal, methods) for literal, methods in matches if literal]
    return sorted(set().union(*(methods for _literal, methods in matches)))


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


class CatchAll:
    """ASGI middleware: an exception nothing else answered becomes 500 `internal_error`,
    logged with its traceback (once, here); the body says nothing about the code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            return  # nobody to answer
        except Exception:
            log.exception("request failed", method=scope.get("method"), path=scope.get("path"))
            if started:
                raise  # half an answer went out: only closing the connection is left
            response = error_response(
                500, "internal_error",
                "the core could not handle this request; the error is in its log")
            await response(scope, receive, send)


BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's 400 detail


def install_error_handling(app: FastAPI) -> None:
    """Handlers that give every error the one body; the catch-all goes outermost (call this
    after adding every other middleware)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (methods := allowed_methods(app, request.url.path)):
            headers["Allow"] = ", ".join(methods)
        detail = exc.detail
        if isinstance(detail, dict) and "error" in detail:
            extra = {k: v for k, v in detail.items() if k not in ("error", "detail")}
            return error_response(exc.status_code, str(detail["error"]),
                                  str(detail.get("detail", "")), headers, **extra)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such route"
        if exc.status_code == 400 and detail == BODY_NOT_PARSED:
            # FastAPI's answer to a body that is not JSON at all: a request that does not fit
            # its schema, answered like every other (422 invalid).
            return error_response(422, "invalid", [
                {"loc": ["body"], "msg": "not valid JSON", "type": "json_invalid"}],
                headers or None)
        return error_response(exc.status_code, None, str(detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", issues(exc.errors()))

    @app.exception_handler(InvalidIdentifier)
    async def invalid_id(_request: Request, exc: InvalidIdentifier) -> JSONResponse:
        return error_response(422, exc.reason, str(exc))

    @app.exception_handler(LookupError)
    async def not_found(_request: Request, exc: LookupError) -> JSONResponse:
        return error_response(404, "not_found", str(exc.args[0] if exc.args else exc))

    app.add_middleware(CatchAll)


# --------------------------------------------------------------------------- OpenAPI

BEARER = "bearer"
BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


def binary_body(*media_types: str, description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body raw (bytes of these media types)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {m: BINARY for m in media_types}}}


def binary_answer(media_type: str, description: str, **more: Any) -> dict[str, Any]:
    """A `responses` entry for bytes (a file) rather than JSON."""
    return {"description": description, "content": {media_type: BINARY}, **more}


def document_core_api(app: FastAPI, secured: Callable[[str, str], bool]) -> None:
    """Replace `app.openapi` with the document of what the core does: every operation's
    errors as `Error` (422 wherever a request has input, 401 wherever a token is needed,
    500 everywhere), the bearer scheme on the operations that need a token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=app.description, openapi_version=app.openapi_version)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if "Error" not in schemas:  # no route named it (FastAPI adds it, with Issue, if one does)
            error = Error.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in error.pop("$defs", {}).items():
                schemas.setdefault(name, definition)
            schemas["Error"] = error
        components["securitySchemes"] = {BEARER: {
            "type": "http", "scheme": "bearer",
            "description": "The core's admin token; an edge site's token for uploads and for "
                           "the reads a site makes (docs/protocol.md, 'Who may call the core')."}}
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                responses = op["responses"]
                if method == "head":  # answers without bodies
                    for answer in responses.values():
                        answer.pop("content", None)
                    if secured(method.upper(), path):
                        op["security"] = [{BEARER: []}]
                        responses.setdefault("401", {"description": DESCRIPTIONS[401]})
                    continue
                for status, answer in list(responses.items()):
                    if status.isdigit() and int(status) >= 400:
                        answer["content"] = ref
                if op.get("parameters") or op.get("requestBody"):
                    responses["422"] = {"description": DESCRIPTIONS[422], "content": ref}
                if secured(method.upper(), path):
                    op["security"] = [{BEARER: []}]
                    responses.setdefault("401", {"description": DESCRIPTIONS[401], "content": ref})
                responses.setdefault("500", {"description": DESCRIPTIONS[500], "content": ref})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
