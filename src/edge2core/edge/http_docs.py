"""The edge's OpenAPI document: the upload body, the refusals each route may answer (with
their codes), and the clean-up of what FastAPI declares on its own."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from edge2core.common.images import RejectReason
from edge2core.edge.http_errors import STATUS, ErrorBody

PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")


def upload_doc(max_bytes: int) -> dict[str, Any]:
    photo = {"type": "string", "format": "binary", "minLength": 1, "maxLength": max_bytes}
    return {
        "requestBody": {
            "description": (
                "The photo (JPEG, PNG or WebP, judged by its bytes) as the raw body, or as the "
                "part named `file` of a multipart/form-data body (a filename is optional, RFC "
                "7578). A raw body with another Content-Type, or none, is read the same way. At "
                f"most {max_bytes} bytes; a larger body is refused with 413 before it is read "
                "(from Content-Length) or as soon as it passes the limit."
            ),
            "content": {
                **{media: {"schema": photo} for media in PHOTO_TYPES},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": photo},
                        "required": ["file"],
                    },
                    "encoding": {"file": {"contentType": ", ".join(PHOTO_TYPES)}},
                },
            },
            "required": True,
        }
    }


def _codes(status: int) -> list[str]:
    ours = {"missing_photo": 400, "invalid_id": 400, "malformed": 400}
    # The edge strips metadata itself: `metadata_present` is the core's refusal, not this door's.
    rejects = [r.value for r in RejectReason if r != RejectReason.METADATA_PRESENT]
    known = {**{r: STATUS.get(r, 400) for r in rejects}, **STATUS, **ours}
    return sorted(code for code, s in known.items() if s == status)


def _error_doc(status: int, what: str, codes: list[str] | None = None) -> dict[str, Any]:
    codes = _codes(status) if codes is None else codes
    doc: dict[str, Any] = {"model": ErrorBody,
                           "description": f"{what} (`error`: {', '.join(codes)})"}
    if status == 401:
        doc["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                               "description": "`Bearer`"}}
    return doc


def responses(*statuses: int, identity: bool) -> dict[int | str, dict[str, Any]]:
    docs = {
        400: _error_doc(400, "refused: the request or the photo is not acceptable"),
        401: _error_doc(401, "no token, or one no device of this site has"),
        403: _error_doc(403, "the token's device may not send this",
                        ["revoked_device", "wrong_device", "wrong_role", "wrong_site"]),
        413: _error_doc(413, "the body is over the size limit (refused before or while reading)"),
        415: _error_doc(415, "the bytes are not a photo in a supported format"),
        500: _error_doc(500, "a bug at the edge; its log has the traceback", ["internal_error"]),
        503: _error_doc(503, "try again later", ["no_model", "overloaded"]),
        507: _error_doc(507, "the spool is full; send the photo again later", ["spool_full"]),
    }
    return {s: docs[s] for s in statuses if identity or s not in (401, 403)}


def _not_null(parameter: dict[str, Any]) -> None:
    """An optional query value is left out, never sent as null: `anyOf [T, null]` -> `T`."""
    schema = parameter.get("schema", {})
    variants = [v for v in schema.get("anyOf", ()) if v != {"type": "null"}]
    if len(variants) == 1 and len(schema["anyOf"]) == 2:
        del schema["anyOf"]
        schema.update(variants[0])


def clean_openapi(app: FastAPI) -> None:
    """FastAPI declares 422 for every route with parameters (this door answers 400 instead)
    and `anyOf [T, null]` for optional query values."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
                for parameter in operation.get("parameters", []):
                    _not_null(parameter)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
