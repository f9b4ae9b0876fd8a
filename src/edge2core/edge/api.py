"""The edge's HTTP door: photo uploads, recognition, status, metrics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.images import ImageRejected, RejectReason
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

_STATUS = {"too_large": 413, "unsupported_format": 415, "not_an_image": 415, "spool_full": 507,
           "no_model": 503, "overloaded": 503, "wrong_site": 403, "unknown_device": 401, "revoked_device": 403,
           "wrong_device": 403, "wrong_role": 403}
_UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
        "required": True,
    }
}


class PhotoAccepted(BaseModel):
    sha256: str
    size: int
    duplicate: bool


async def read_photo(request: Request, max_bytes: int) -> bytes:
    """Raw body or multipart field `file`, read with a hard cap on size."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_part_size=max_bytes + 1)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise MissingPhoto("multipart uploads carry the photo in a field named 'file'")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        return data
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)  # stop reading what we will refuse anyway
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ImageRejected:
    return ImageRejected(RejectReason.TOO_LARGE, f"photos are limited to {max_bytes} bytes")


class MissingPhoto(ValueError):
    pass


def identify(
    devices: DeviceRegistry | None,
    authorization: str,
    claimed: str | None,
    role: DeviceRole | None,
    anonymous: str | None = None,
) -> str:
    """The sending device's id: from its bearer token when device identity is on."""
    if devices is None:
        if not (claimed or anonymous):
            raise MissingField("say which device sends this: ?device=<id>")
        return claimed or anonymous  # type: ignore[return-value]
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise DeviceRefused("unknown_device", "send 'Authorization: Bearer <device token>'")
    device = devices.authenticate(token)
    if claimed and claimed != device.id:
        raise DeviceRefused("wrong_device", f"this token belongs to {device.id!r}, not {claimed!r}")
    if role is not None and device.role != role:
        raise DeviceRefused("wrong_role", f"{device.id!r} is a {device.role.value}, not a {role.value}")
    return device.id


def create_edge_app(
    gateway: Gateway,
    site: str,
    status: Callable[[], dict],
    max_bytes: int,
    devices: DeviceRegistry | None = None,
) -> FastAPI:
    app = FastAPI(title=f"edge2core edge {site}", version="0.1.0")
    mount_metrics(app)

    def refusal(exc: Exception, door: str = "http") -> JSONResponse:
        reason = "missing_photo" if isinstance(exc, MissingPhoto) else error_reason(exc)
        PHOTOS_REJECTED.labels(door=door, reason=reason).inc()
        if isinstance(exc, DeviceRefused):
            DEVICES_REFUSED.labels(door=door, reason=reason).inc()
        return JSONResponse({"error": reason, "detail": str(exc)[:1000]},
                            status_code=_STATUS.get(reason, 400))

    def meta(source: Source, device: str, sku: str | None, captured_at: datetime | None,
             request_id: str | None) -> CaptureMeta:
        return CaptureMeta(site=site, device=device, source=source, sku=sku,
                           captured_at=captured_at, request_id=request_id)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status")
    def get_status() -> dict:
        return status()

    @app.post("/v1/photos", status_code=201, response_model=PhotoAccepted, openapi_extra=_UPLOAD_DOC,
              responses={400: {}, 413: {}, 415: {}, 507: {}})
    async def post_photo(
        request: Request,
        device: str | None = Query(None, description="the sending device's id (default: the token's)"),
        source: Source = Query(Source.KIOSK),
        sku: str | None = Query(None, description="the scanned product (kiosk captures)"),
        captured_at: datetime | None = Query(None),
        authorization: str = Header(""),
    ) -> JSONResponse | PhotoAccepted:
        """Store a photo durably; 2xx means it is on disk and will reach the core."""
        try:
            sender = identify(devices, authorization, device, DeviceRole(source.value))
            data = await read_photo(request, max_bytes)
            capture = meta(source, sender, sku, captured_at, None)
            receipt = await run_in_threadpool(gateway.capture, data, capture, "http")
        except DEVICE_ERRORS + (SpoolFull, MissingPhoto) as exc:
            return refusal(exc)
        body = PhotoAccepted(sha256=receipt.sha256, size=receipt.size, duplicate=receipt.duplicate)
        return JSONResponse(body.model_dump(), status_code=200 if receipt.duplicate else 201)

    @app.post("/v1/recognize", response_model=Answer, openapi_extra=_UPLOAD_DOC,
              responses={400: {}, 413: {}, 415: {}, 503: {}})
    async def post_recognize(
        request: Request,
        device: str | None = Query(None, description="the asking device (default: the token's)"),
        request_id: str | None = Query(None),
        authorization: str = Header(""),
    ) -> Response:
        try:
            sender = identify(devices, authorization, device, None, anonymous="http-anonymous")
            data = await read_photo(request, max_bytes)
            capture = meta(Source.SHOPPER, sender, None, None, request_id)
            # On the shared inference pool (as MQTT requests are), not on a thread of its own.
            answer = await gateway.recognize_async(data, capture, "http")
        except RECOGNITION_ERRORS + (MissingPhoto,) as exc:
            return refusal(exc)
        # The same bytes an MQTT answer carries; serialised once (no re-validation).
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: Exception) -> JSONResponse:
        return refusal(exc)

    return app
