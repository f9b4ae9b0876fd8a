"""The edge's HTTP door: photo uploads, recognition, status, metrics.

Every refusal is JSON `{"error": code, "detail": message}` (schema `ErrorBody`), never a
traceback or a server path; a bug gives `500 internal_error` and is logged with its traceback.
Bodies are read as they arrive and never past their limit: a `Content-Length` over it is
refused before the body is read (so an `Expect: 100-continue` client never sends it), a body
that grows past it is refused at that moment, and multipart bodies are parsed as a stream in
memory (nothing is written to disk). Ids are checked with `common.identifiers` before
anything else is done with them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
)
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.identifiers import (
    ID_PATTERN,
    SKU_PATTERN,
    IdKind,
    InvalidIdentifier,
    check_optional,
)
from edge2core.common.images import ImageRejected, RejectReason
from edge2core.common.logging import get_logger
from edge2core.common.metrics import DEVICES_REFUSED, PHOTOS_REJECTED, mount_metrics
from edge2core.edge.devices import DeviceRefused, DeviceRegistry, DeviceRole
from edge2core.edge.gateway import (
    DEVICE_ERRORS,
    RECOGNITION_ERRORS,
    Gateway,
    MissingField,
    error_reason,
)
from edge2core.edge.inference import Answer
from edge2core.edge.spool import SpoolFull

log = get_logger(__name__)

# Room for a multipart body's boundaries, part headers and small fields around the photo.
MULTIPART_OVERHEAD = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046

_STATUS = {
    "too_large": 413,
    "unsupported_format": 415,
    "not_an_image": 415,
    "spool_full": 507,
    "no_model": 503,
    "overloaded": 503,
    "wrong_site": 403,
    "unknown_device": 401,
    "revoked_device": 403,
    "wrong_device": 403,
    "wrong_role": 403,
    "internal_error": 500,
    "not_found": 404,
    "method_not_allowed": 405,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
_BODY_DONE = "e2c.body_done"  # set in the ASGI scope once the request body was read to its end
_PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")


def _upload_doc(max_bytes: int) -> dict[str, Any]:
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
                **{media: {"schema": photo} for media in _PHOTO_TYPES},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": photo},
                        "required": ["file"],
                    },
                    "encoding": {"file": {"contentType": ", ".join(_PHOTO_TYPES)}},
                },
            },
            "required": True,
        }
    }


class ErrorBody(BaseModel):
    """Every refusal, whatever the route and status."""

    error: str = Field(description="a stable reason code, e.g. `too_large`", examples=["too_large"])
    detail: str = Field(description="what was wrong, for a person")


class PhotoAccepted(BaseModel):
    sha256: str = Field(description="the id of the photo kept (its prepared bytes' sha256)")
    size: int = Field(description="the size in bytes of the photo kept")
    duplicate: bool = Field(description="true when an earlier photo was kept instead of this one")


# --------------------------------------------------------------------------- refusals


class DoorRefusal(ValueError):
    """A request this door refuses before the gateway sees it."""

    reason = "malformed"


class MissingPhoto(DoorRefusal):
    reason = "missing_photo"


class MalformedBody(DoorRefusal):
    reason = "malformed"


def _too_large(max_bytes: int) -> ImageRejected:
    return ImageRejected(RejectReason.TOO_LARGE, f"photos are limited to {max_bytes} bytes")


def _reason(exc: Exception) -> str:
    if isinstance(exc, DoorRefusal | InvalidIdentifier):
        return exc.reason
    return error_reason(exc)


def _validation_detail(errors: list[Any]) -> str:
    """Where and what, from pydantic/FastAPI errors: never the server's code or paths."""
    parts = []
    for error in errors[:5]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {error.get('msg', 'invalid')}" if loc else str(error.get("msg")))
    return "; ".join(parts) or "the request is malformed"


def _detail(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return _validation_detail(exc.errors(include_url=False))
    return str(exc)[:1000] or type(exc).__name__


def _body_announced(request: Request) -> bool:
    headers = request.headers
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length not in ("", "0")


def _error_response(request: Request, reason: str, detail: str, status: int) -> JSONResponse:
    headers: dict[str, str] = {}
    if reason == "unknown_device":
        headers["WWW-Authenticate"] = "Bearer"
    # A body left unread on purpose (over the limit, or one an `Expect: 100-continue` client is
    # holding back) is not read afterwards either: the connection closes with the answer.
    if not request.scope.get(_BODY_DONE) and (status == 413 or (
        _body_announced(request) and request.headers.get("expect", "").lower() == "100-continue"
    )):
        headers["Connection"] = "close"
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- bodies


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise MalformedBody(f"Content-Length {value[:40]!r} is not a number") from None


async def _stream(request: Request, limit: int, too_large: Exception) -> Any:
    """The body's chunks, refusing as soon as more than `limit` bytes arrived."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        if chunk:
            yield chunk
    request.scope[_BODY_DONE] = True


class _FormParts:
    """Callbacks for python-multipart's streaming parser: keeps the part named `file` (with or
    without a filename, whatever its declared type, RFC 7578) in memory, up to `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.photo: bytearray | None = None
        self.ended = False
        self._in_photo = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_photo = False

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        names = {k.decode("latin-1").lower(): v for k, v in params.items()}
        if disposition != b"form-data" or names.get("name") != b"file":
            return
        if self.photo is not None:
            raise MalformedBody("send one photo per request: more than one part is named 'file'")
        self.photo = bytearray()
        self._in_photo = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_photo:
            return  # other fields are skipped (the whole body is capped)
        assert self.photo is not None
        if len(self.photo) + (end - start) > self.max_bytes:
            raise _too_large(self.max_bytes)
        self.photo.extend(data[start:end])

    def _part_end(self) -> None:
        self._in_photo = False

    def _end(self) -> None:
        self.ended = True


async def _read_multipart(request: Request, params: dict[bytes, bytes], max_bytes: int) -> bytes:
    boundary = {k.lower(): v for k, v in params.items()}.get(b"boundary", b"")
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise MalformedBody("multipart/form-data needs a boundary of 1-70 characters")
    parts = _FormParts(max_bytes)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        async for chunk in _stream(request, max_bytes + MULTIPART_OVERHEAD, _too_large(max_bytes)):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedBody(f"the multipart body cannot be parsed: {str(exc)[:200]}") from None
    if parts.photo is None:
        raise MissingPhoto("multipart uploads carry the photo in a part named 'file'")
    if not parts.ended:
        raise MalformedBody("the multipart body ends before its closing boundary")
    return bytes(parts.photo)


async def read_photo(request: Request, max_bytes: int) -> bytes:
    """The raw body, or the multipart part named `file`; never reads past the limit."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    multipart = media_type == b"multipart/form-data"  # parse_options_header lower-cases it
    declared = _content_length(request)
    limit = max_bytes + MULTIPART_OVERHEAD if multipart else max_bytes
    if declared is not None and declared > limit:
        raise _too_large(max_bytes)  # before reading: an Expect: 100-continue client sends nothing
    if multipart:
        return await _read_multipart(request, params, max_bytes)
    return b"".join([chunk async for chunk in _stream(request, max_bytes, _too_large(max_bytes))])


# --------------------------------------------------------------------------- query values

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:(?P<second>\d{2})(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339(value: object) -> object:
    """Only an RFC 3339 `date-time` with a time zone (what the OpenAPI document declares)."""
    if not isinstance(value, str) or not (match := _RFC3339.fullmatch(value)):
        raise ValueError("use an RFC 3339 date-time with a time zone, e.g. 2026-11-24T10:00:00Z")
    if match["second"] == "60":  # a leap second: Python has none, the second before will do
        value = value[: match.start("second")] + "59" + value[match.end("second"):]
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once expressed in UTC") from None


CapturedAt = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_to_utc)]


def _id_query(description: str, pattern: str = ID_PATTERN) -> Any:
    # Checked by common.identifiers in the handler (reason invalid_id); the document says the rule.
    return Query(None, description=description,
                 json_schema_extra={"pattern": pattern, "minLength": 1, "maxLength": 64})


# --------------------------------------------------------------------------- identity


def identify(
    devices: DeviceRegistry | None,
    token: str | None,
    claimed: str | None,
    role: DeviceRole | None,
    anonymous: str | None = None,
) -> str:
    """The sending device's id: from its bearer token when device identity is on."""
    if devices is None:
        if not (claimed or anonymous):
            raise MissingField("say which device sends this: ?device=<id>")
        return claimed or anonymous  # type: ignore[return-value]
    if not token:
        raise DeviceRefused("unknown_device", "send 'Authorization: Bearer <device token>'")
    device = devices.authenticate(token)
    if claimed and claimed != device.id:
        raise DeviceRefused("wrong_device", f"this token belongs to {device.id!r}, not {claimed!r}")
    if role is not None and device.role != role:
        raise DeviceRefused("wrong_role",
                            f"{device.id!r} is a {device.role.value}, not a {role.value}")
    return device.id


# --------------------------------------------------------------------------- documentation


def _codes(status: int) -> list[str]:
    ours = {"missing_photo": 400, "invalid_id": 400, "malformed": 400}
    # The edge strips metadata itself: `metadata_present` is the core's refusal, not this door's.
    rejects = [r.value for r in RejectReason if r != RejectReason.METADATA_PRESENT]
    known = {**{r: _STATUS.get(r, 400) for r in rejects}, **_STATUS, **ours}
    return sorted(code for code, s in known.items() if s == status)


def _error_doc(status: int, what: str, codes: list[str] | None = None) -> dict[str, Any]:
    codes = _codes(status) if codes is None else codes
    doc: dict[str, Any] = {"model": ErrorBody,
                           "description": f"{what} (`error`: {', '.join(codes)})"}
    if status == 401:
        doc["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                               "description": "`Bearer`"}}
    return doc


def _responses(*statuses: int, identity: bool) -> dict[int | str, dict[str, Any]]:
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


def _clean_openapi(app: FastAPI) -> None:
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


# --------------------------------------------------------------------------- the app


class _Guard:
    """Turns an unexpected exception in any handler into `500 internal_error`, logged with its
    traceback, so no request ever sees a traceback and the server keeps serving."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            log.info("client went away mid-request", method=scope.get("method"),
                     path=scope.get("path"))
        except Exception:
            incident = secrets.token_hex(4)
            log.error("request failed", exc_info=True, incident=incident,
                      method=scope.get("method"), path=scope.get("path"))
            if started:
                return  # the answer was under way: the server closes the connection
            PHOTOS_REJECTED.labels(door="http", reason="internal_error").inc()
            body = {"error": "internal_error",
                    "detail": f"the edge failed to handle this request (incident {incident}); "
                              "its log has the details"}
            await JSONResponse(body, status_code=500, headers={"Connection": "close"})(
                scope, receive, send)


def create_edge_app(
    gateway: Gateway,
    site: str,
    status: Callable[[], dict],
    max_bytes: int,
    devices: DeviceRegistry | None = None,
) -> FastAPI:
    app = FastAPI(title=f"edge2core edge {site}", version="0.1.0")
    mount_metrics(app)
    identity = devices is not None
    if identity:
        bearer = HTTPBearer(auto_error=False, scheme_name="deviceToken",
                            description="the device's secret, as issued by `edge devices add`")

        def token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
            return credentials.credentials if credentials is not None else None
    else:

        def token() -> str | None:  # device identity is off: no token is asked for
            return None

    def refusal(request: Request, exc: Exception, door: str = "http") -> JSONResponse:
        reason = _reason(exc)
        PHOTOS_REJECTED.labels(door=door, reason=reason).inc()
        if isinstance(exc, DeviceRefused):
            DEVICES_REFUSED.labels(door=door, reason=reason).inc()
        return _error_response(request, reason, _detail(exc), _STATUS.get(reason, 400))

    def meta(source: Source, device: str, sku: str | None, captured_at: datetime | None,
             request_id: str | None) -> CaptureMeta:
        return CaptureMeta(site=site, device=device, source=source, sku=sku,
                           captured_at=captured_at, request_id=request_id)

    @app.get("/healthz", responses=_responses(500, identity=identity))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status", responses=_responses(500, identity=identity))
    def get_status() -> dict:
        return status()

    photo_statuses = (400, 401, 403, 413, 415, 500, 507)
    upload_doc = _upload_doc(max_bytes)

    @app.post("/v1/photos", status_code=201, response_model=PhotoAccepted, openapi_extra=upload_doc,
              responses={200: {"model": PhotoAccepted,
                               "description": "a duplicate: the photo already kept is named"},
                         201: {"description": "stored durably; it will reach the core"},
                         **_responses(*photo_statuses, identity=identity)})
    async def post_photo(
        request: Request,
        device: str | None = _id_query("the sending device's id (default: the token's)"),
        source: Source = Query(Source.KIOSK),
        sku: str | None = _id_query("the scanned product (kiosk captures need it)", SKU_PATTERN),
        captured_at: CapturedAt | None = Query(None, description="when the photo was taken"),
        device_token: str | None = Depends(token),
    ) -> JSONResponse:
        """Store a photo durably; 2xx means it is on disk and will reach the core."""
        try:
            check_optional(IdKind.DEVICE, device)
            check_optional(IdKind.SKU, sku)
            sender = identify(devices, device_token, device, DeviceRole(source.value))
            data = await read_photo(request, max_bytes)
            capture = meta(source, sender, sku, captured_at, None)
            receipt = await run_in_threadpool(gateway.capture, data, capture, "http")
        except DEVICE_ERRORS + (SpoolFull, DoorRefusal, InvalidIdentifier) as exc:
            return refusal(request, exc)
        body = PhotoAccepted(sha256=receipt.sha256, size=receipt.size, duplicate=receipt.duplicate)
        return JSONResponse(body.model_dump(), status_code=200 if receipt.duplicate else 201)

    @app.post("/v1/recognize", response_model=Answer, openapi_extra=upload_doc,
              responses=_responses(400, 401, 403, 413, 415, 500, 503, identity=identity))
    async def post_recognize(
        request: Request,
        device: str | None = _id_query("the asking device (default: the token's)"),
        request_id: str | None = _id_query("echoed in the answer"),
        device_token: str | None = Depends(token),
    ) -> Response:
        try:
            check_optional(IdKind.DEVICE, device)
            check_optional(IdKind.REQUEST_ID, request_id)
            sender = identify(devices, device_token, device, None, anonymous="http-anonymous")
            data = await read_photo(request, max_bytes)
            capture = meta(Source.SHOPPER, sender, None, None, request_id)
            # On the shared inference pool (as MQTT requests are), not on a thread of its own.
            answer = await gateway.recognize_async(data, capture, "http")
        except RECOGNITION_ERRORS + (DoorRefusal, InvalidIdentifier) as exc:
            return refusal(request, exc)
        # The same bytes an MQTT answer carries; serialised once (no re-validation).
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # str(exc) names the handler's file and line: only where and what go back.
        PHOTOS_REJECTED.labels(door="http", reason="malformed").inc()
        return _error_response(request, "malformed", _validation_detail(list(exc.errors())), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error_response(request, _HTTP_CODES.get(exc.status_code, "error"),
                                   str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    app.add_middleware(_Guard)
    _clean_openapi(app)
    return app
