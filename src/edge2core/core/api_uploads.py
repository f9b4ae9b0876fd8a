"""Resumable uploads over HTTP: the tus 1.0 core protocol shape, at `/v1/uploads/<sha256>`.

    POST   /v1/uploads/<sha256>   create (or find) the upload: Upload-Length, Upload-Metadata
    HEAD   /v1/uploads/<sha256>   Upload-Offset: how much the core has durably
    PATCH  /v1/uploads/<sha256>   append at Upload-Offset (application/offset+octet-stream)
    DELETE /v1/uploads/<sha256>   give up (tus termination)
    OPTIONS /v1/uploads           what this server supports

The id is the content hash, so a retry after any failure finds the same upload. The 204 of the
PATCH that completes the upload means: hash and size verified, privacy re-checked, stored in
the object store and recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from edge2core.common.events import META_HEADER, SHA256_PATTERN, PhotoRecord
from edge2core.common.metrics import CORE_IMAGES
from edge2core.core.access import site_token_ok
from edge2core.core.receiver import Receipt, UploadError
from edge2core.core.uploads import TUS_EXTENSIONS, TUS_VERSION, ClientGone, UploadState

if TYPE_CHECKING:
    from edge2core.core.api import CoreServices

OFFSET_CONTENT_TYPE = "application/offset+octet-stream"


def parse_upload_metadata(value: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64(value)` pairs."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, _, encoded = item.partition(" ")
        try:
            pairs[key] = base64.b64decode(encoded, validate=True).decode() if encoded else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise UploadError(400, "bad_metadata", f"Upload-Metadata {key!r} is not base64") from exc
    return pairs



def _tus_headers(state: UploadState | None = None) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if state is not None:
        headers["Upload-Offset"] = str(state.offset)
        headers["Upload-Length"] = str(state.length)
        if state.done is None:
            headers["Upload-Expires"] = format_datetime(state.expires_at, usegmt=True)
        else:
            headers["X-E2C-Key"] = state.done.key
            headers["X-E2C-Created"] = "true" if state.done.created else "false"
            if state.done.erased:
                headers["X-E2C-Erased"] = "true"
    return headers


def upload_refusal(exc: UploadError, headers: dict[str, str] | None = None) -> JSONResponse:
    """A refused upload's answer (counted), for every upload path."""
    CORE_IMAGES.labels(outcome=exc.code).inc()
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status,
                        headers={**(headers or {}), **exc.headers})


def _refusal(exc: UploadError) -> JSONResponse:
    return upload_refusal(exc, _tus_headers())


def uploads_router(services: CoreServices) -> APIRouter:
    router = APIRouter(tags=["uploads"])
    uploads = services.receiver.uploads

    def authorize(site: str | None, authorization: str) -> None:
        # An upload not known here (site None): any site's valid token will do.
        if site_token_ok(services.site_tokens, site, authorization):
            return
        raise UploadError(401, "unauthorized", f"no valid token for site {site!r}")

    def check_tus(version: str | None) -> None:
        if version != TUS_VERSION:
            raise UploadError(
                412, "tus_version", f"Tus-Resumable must be {TUS_VERSION}",
                {"Tus-Version": TUS_VERSION},
            )

    def check_id(sha256: str) -> None:
        import re

        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise UploadError(400, "bad_id", "an upload id is the photo's sha256 (64 hex digits)")

    @router.options("/v1/uploads", status_code=204)
    def tus_options() -> Response:
        return Response(status_code=204, headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(services.receiver.max_bytes),
        })

    @router.post("/v1/uploads/{sha256}")
    def create_upload(
        sha256: str,
        upload_length: int | None = Header(None),
        upload_metadata: str = Header(""),
        meta: str | None = Header(None, alias=META_HEADER),
        tus_resumable: str | None = Header(None),
        authorization: str = Header(""),
    ) -> Response:
        try:
            check_tus(tus_resumable)
            check_id(sha256)
            raw = meta or parse_upload_metadata(upload_metadata).get("record")
            if not raw:
                raise UploadError(400, "bad_metadata", "Upload-Metadata needs `record` (the photo record)")
            try:
                record = PhotoRecord.model_validate_json(raw)
            except ValidationError as exc:
                raise UploadError(400, "bad_metadata", f"the photo record is invalid: {exc}") from exc
            if record.sha256 != sha256:
                raise UploadError(400, "bad_metadata", "the URL and the record name different ids")
            authorize(record.site, authorization)
            if upload_length is None or upload_length < 1:
                raise UploadError(400, "no_length", "Upload-Length (a positive integer) is required")
            state, created = uploads.create(record, upload_length)
        except UploadError as exc:
            return _refusal(exc)
        headers = {**_tus_headers(state), "Location": f"/v1/uploads/{sha256}"}
        if state.done is not None:
            CORE_IMAGES.labels(outcome="erased" if state.done.erased else "replay").inc()
        return Response(status_code=201 if created else 200, headers=headers)

    @router.head("/v1/uploads/{sha256}")
    def upload_offset(sha256: str, authorization: str = Header("")) -> Response:
        try:
            check_id(sha256)
            state = uploads.head(sha256)
            authorize(state.record.site if state else None, authorization)
        except UploadError as exc:
            return Response(status_code=exc.status, headers=_tus_headers())
        if state is None:
            return Response(status_code=404, headers=_tus_headers())
        return Response(status_code=200, headers=_tus_headers(state))

    @router.patch("/v1/uploads/{sha256}")
    async def append(
        sha256: str,
        request: Request,
        upload_offset: int | None = Header(None),
        content_type: str = Header(""),
        tus_resumable: str | None = Header(None),
        authorization: str = Header(""),
    ) -> Response:
        try:
            check_tus(tus_resumable)
            check_id(sha256)
            if content_type.split(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
                raise UploadError(415, "content_type", f"PATCH bodies are {OFFSET_CONTENT_TYPE}")
            if upload_offset is None or upload_offset < 0:
                raise UploadError(400, "no_offset", "Upload-Offset is required")
            state = await asyncio.to_thread(uploads.state, sha256)  # file reads: off the loop
            authorize(state.record.site if state else None, authorization)
            state = await uploads.append(sha256, upload_offset, request.stream())
        except UploadError as exc:
            return _refusal(exc)
        except ClientGone:
            # Nobody is listening; what arrived is fsync'd and HEAD reports it.
            return Response(status_code=400, headers=_tus_headers())
        if state.done is not None:
            CORE_IMAGES.labels(outcome="stored" if state.done.created else "replay").inc()
        return Response(status_code=204, headers=_tus_headers(state))

    @router.delete("/v1/uploads/{sha256}", status_code=204)
    def terminate(
        sha256: str, tus_resumable: str | None = Header(None), authorization: str = Header("")
    ) -> Response:
        try:
            check_tus(tus_resumable)
            check_id(sha256)
            state = uploads.state(sha256)
            if state is None:
                raise UploadError(404, "no_upload", "no upload in progress with this id")
            authorize(state.record.site, authorization)
            uploads.discard(sha256)
        except UploadError as exc:
            return _refusal(exc)
        return Response(status_code=204, headers=_tus_headers())

    return router


def receipt_response(receipt: Receipt) -> JSONResponse:
    """The answer to a one-shot upload (counted), from the route or the fast path."""
    CORE_IMAGES.labels(outcome="stored" if receipt.created else "replay").inc()
    return JSONResponse(
        {"sha256": receipt.sha256, "key": receipt.key, "size": receipt.size,
         "created": receipt.created, "erased": receipt.erased},
        status_code=201 if receipt.created else 200,
    )


class ImagePutFastPath:
    """ASGI middleware: `PUT /v1/images/<sha256>` straight to the receiver.

    The one-shot upload is the core's hot path. Requests that carry a valid photo record for
    the URL's id (and, where site tokens are set, the site's token) are handled here, without
    the framework's routing, dependency solving and its thread hop; the answers are those of
    the FastAPI route (`create_core_app`), which still serves every other request, including
    uploads with a missing or invalid record or a bad token (so their errors are its own).
    """

    PREFIX = "/v1/images/"

    def __init__(self, app: ASGIApp, services: CoreServices) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "PUT"
            or not scope["path"].startswith(self.PREFIX)
            or (record := self._record(scope)) is None
        ):
            await self.app(scope, receive, send)
            return
        try:
            receipt = await self.services.receiver.receive(record, _body(receive))
        except UploadError as exc:
            response = upload_refusal(exc)
        else:
            response = receipt_response(receipt)
        await response(scope, receive, send)

    def _record(self, scope: Scope) -> PhotoRecord | None:
        """The request's photo record if the fast path may take it, else None."""
        sha256 = scope["path"][len(self.PREFIX):]
        if "/" in sha256:
            return None
        meta = authorization = None
        for name, value in scope["headers"]:  # the first of each, as the route reads them
            if name == _META_NAME and meta is None:
                meta = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        if meta is None:
            return None
        try:
            record = PhotoRecord.model_validate_json(meta.decode("latin-1"))
        except ValidationError:
            return None
        if record.sha256 != sha256:
            return None
        if not site_token_ok(self.services.site_tokens, record.site,
                             (authorization or b"").decode("latin-1")):
            return None
        return record


_META_NAME = META_HEADER.lower().encode("latin-1")


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk (as `Request.stream()`)."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
