"""The edge's HTTP door: photo uploads, recognition, status, metrics.

Every refusal is JSON `{"error": code, "detail": message}` (`http_errors`), never a traceback or
a server path; a bug gives `500 internal_error` and is logged with its traceback. Bodies are
read as they arrive and never past their limit (`http_body`). Ids are checked with
`common.identifiers` before anything else is done with them. The OpenAPI document is shaped in
`http_docs`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge2core.common.asgi_guard import InternalErrorGuard
from edge2core.common.errors import describe_validation
from edge2core.common.events import CaptureMeta, Source
from edge2core.common.identifiers import (
    ID_PATTERN,
    SKU_PATTERN,
    IdKind,
    InvalidIdentifier,
    check_optional,
)
from edge2core.common.metrics import DEVICES_REFUSED, PHOTOS_REJECTED, mount_metrics
from edge2core.edge.devices import DeviceRefused, DeviceRegistry, DeviceRole
from edge2core.edge.gateway import DEVICE_ERRORS, RECOGNITION_ERRORS, Gateway, MissingField
from edge2core.edge.http_body import MULTIPART_OVERHEAD, DoorRefusal, read_photo
from edge2core.edge.http_docs import clean_openapi, responses, upload_doc
from edge2core.edge.http_errors import (
    HTTP_CODES,
    STATUS,
    ErrorBody,
    detail_of,
    error_response,
    reason_of,
)
from edge2core.edge.inference import Answer
from edge2core.edge.spool import SpoolFull

__all__ = ["MULTIPART_OVERHEAD", "ErrorBody", "PhotoAccepted", "create_edge_app", "identify",
           "read_photo"]


class PhotoAccepted(BaseModel):
    sha256: str = Field(description="the id of the photo kept (its prepared bytes' sha256)")
    size: int = Field(description="the size in bytes of the photo kept")
    duplicate: bool = Field(description="true when an earlier photo was kept instead of this one")


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
        sender = claimed or anonymous
        if not sender:
            raise MissingField("say which device sends this: ?device=<id>")
        return sender
    if not token:
        raise DeviceRefused("unknown_device", "send 'Authorization: Bearer <device token>'")
    device = devices.authenticate(token)
    if claimed and claimed != device.id:
        raise DeviceRefused("wrong_device", f"this token belongs to {device.id!r}, not {claimed!r}")
    if role is not None and device.role != role:
        raise DeviceRefused("wrong_role",
                            f"{device.id!r} is a {device.role.value}, not a {role.value}")
    return device.id


def _count_internal_error() -> None:
    PHOTOS_REJECTED.labels(door="http", reason="internal_error").inc()


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
    token: Callable[..., str | None]  # a dependency: FastAPI reads its signature
    if identity:
        bearer = HTTPBearer(auto_error=False, scheme_name="deviceToken",
                            description="the device's secret, as issued by `edge devices add`")

        def bearer_token(
            credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
        ) -> str | None:
            return credentials.credentials if credentials is not None else None

        token = bearer_token
    else:

        def no_token() -> str | None:  # device identity is off: no token is asked for
            return None

        token = no_token

    def refusal(request: Request, exc: Exception, door: str = "http") -> JSONResponse:
        reason = reason_of(exc)
        PHOTOS_REJECTED.labels(door=door, reason=reason).inc()
        if isinstance(exc, DeviceRefused):
            DEVICES_REFUSED.labels(door=door, reason=reason).inc()
        return error_response(request, reason, detail_of(exc), STATUS.get(reason, 400),
                              retry_after_s=getattr(exc, "retry_after_s", None))

    def meta(source: Source, device: str, sku: str | None, captured_at: datetime | None,
             request_id: str | None) -> CaptureMeta:
        return CaptureMeta(site=site, device=device, source=source, sku=sku,
                           captured_at=captured_at, request_id=request_id)

    @app.get("/healthz", responses=responses(500, identity=identity))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status", responses=responses(500, identity=identity))
    def get_status() -> dict:
        return status()

    photo_statuses = (400, 401, 403, 413, 415, 500, 507)
    upload_body = upload_doc(max_bytes)

    @app.post("/v1/photos", status_code=201, response_model=PhotoAccepted, openapi_extra=upload_body,
              responses={200: {"model": PhotoAccepted,
                               "description": "a duplicate: the photo already kept is named"},
                         201: {"description": "stored durably; it will reach the core"},
                         **responses(*photo_statuses, identity=identity)})
    async def post_photo(
        request: Request,
        device: str | None = _id_query("the sending device's id (default: the token's)"),
        source: DeviceRole = Query(DeviceRole.KIOSK),  # a device's role; never `camera`
        sku: str | None = _id_query("the scanned product (kiosk captures need it)", SKU_PATTERN),
        captured_at: CapturedAt | None = Query(None, description="when the photo was taken"),
        device_token: str | None = Depends(token),
    ) -> JSONResponse:
        """Store a photo durably; 2xx means it is on disk and will reach the core."""
        try:
            check_optional(IdKind.DEVICE, device)
            check_optional(IdKind.SKU, sku)
            sender = identify(devices, device_token, device, source)
            data = await read_photo(request, max_bytes)
            capture = meta(Source(source.value), sender, sku, captured_at, None)
            receipt = await run_in_threadpool(gateway.capture, data, capture, "http")
        except DEVICE_ERRORS + (SpoolFull, DoorRefusal, InvalidIdentifier) as exc:
            return refusal(request, exc)
        body = PhotoAccepted(sha256=receipt.sha256, size=receipt.size, duplicate=receipt.duplicate)
        return JSONResponse(body.model_dump(), status_code=200 if receipt.duplicate else 201)

    @app.post("/v1/recognize", response_model=Answer, openapi_extra=upload_body,
              responses=responses(400, 401, 403, 413, 415, 500, 503, identity=identity))
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
        return error_response(request, "malformed", describe_validation(exc.errors()), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(request, HTTP_CODES.get(exc.status_code, "error"),
                                   str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    app.add_middleware(InternalErrorGuard, role="edge", on_error=_count_internal_error)
    clean_openapi(app)
    return app
