"""The core's OpenAPI document says what the core really answers: every operation's errors as
`Error`, 422 wherever a request has input, 401 wherever a token is needed, 500 everywhere, and
the bearer scheme on the operations that need a token. Routes describe their own answers with
`errors(...)`, `binary_body` and `binary_answer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from edge2core.core.api.errors import CODES, Error

BEARER = "bearer"
BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
DESCRIPTIONS = {
    400: "Bad request", 401: "No valid token (Authorization: Bearer ...)",
    404: "Not found", 409: "Conflict with the current state", 413: "Too large",
    415: "Unsupported media type", 416: "Range not satisfiable",
    422: "Invalid request: the body, a parameter or a value does not fit",
    500: "Internal error (logged with its traceback at the core)",
}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
Secured = Callable[[str, str], bool]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each of these statuses answered with `Error`."""
    return {code: {"model": Error, "description": DESCRIPTIONS.get(code, CODES.get(code, "Error"))}
            for code in codes}


def binary_body(*media_types: str, description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body raw (bytes of these media types)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {m: BINARY for m in media_types}}}


def binary_answer(media_type: str, description: str, **more: Any) -> dict[str, Any]:
    """A `responses` entry for bytes (a file) rather than JSON."""
    return {"description": description, "content": {media_type: BINARY}, **more}


def _components(schema: dict[str, Any]) -> None:
    """`Error` (and `Issue`) instead of FastAPI's validation error schemas; the bearer scheme."""
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


def _head(op: dict[str, Any], secured: bool) -> None:
    """HEAD answers have no bodies."""
    for answer in op["responses"].values():
        answer.pop("content", None)
    if secured:
        op["security"] = [{BEARER: []}]
        op["responses"].setdefault("401", {"description": DESCRIPTIONS[401]})


def _operation(op: dict[str, Any], secured: bool) -> None:
    """Every error of an operation as `Error`, with the statuses every operation may answer."""
    responses = op["responses"]
    for status, answer in list(responses.items()):
        if status.isdigit() and int(status) >= 400:
            answer["content"] = ERROR_REF
    if op.get("parameters") or op.get("requestBody"):
        responses["422"] = {"description": DESCRIPTIONS[422], "content": ERROR_REF}
    if secured:
        op["security"] = [{BEARER: []}]
        responses.setdefault("401", {"description": DESCRIPTIONS[401], "content": ERROR_REF})
    responses.setdefault("500", {"description": DESCRIPTIONS[500], "content": ERROR_REF})


def document_core_api(app: FastAPI, secured: Secured) -> None:
    """Replace `app.openapi` with the document of what the core does; `secured(method,
    path)` says whether an operation needs a token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=app.description, openapi_version=app.openapi_version)
        _components(schema)
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                if method == "head":
                    _head(op, secured(method.upper(), path))
                else:
                    _operation(op, secured(method.upper(), path))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
