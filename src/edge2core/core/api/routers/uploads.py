"""Resumable uploads over HTTP: the tus 1.0 core protocol shape, at `/v1/uploads/<sha256>`.

    POST   /v1/uploads            tus creation (stock clients): a new upload, its Location
    POST   /v1/uploads/<sha256>   create (or find) the upload: Upload-Length, Upload-Metadata
    HEAD   /v1/uploads/<sha256>   Upload-Offset: how much the core has durably
    PATCH  /v1/uploads/<sha256>   append at Upload-Offset (application/offset+octet-stream)
    DELETE /v1/uploads/<sha256>   give up (tus termination)
    OPTIONS /v1/uploads           what this server supports

The id is the content hash, so a retry after any failure finds the same upload. The 204 of the
PATCH that completes the upload means: hash and size verified, privacy re-checked, stored in
the object store and recorded; it carries `X-E2C-Key`, the stored object's key, which is the
only proof of storage (an upload whose bytes all arrived but could not be stored answers 503,
and HEAD then reports it complete without a key until a PATCH with an empty body finishes it).

Every answer carries the tus headers, errors included, so these routes answer every failure
themselves (`_refused`) instead of leaving it to the app's handlers: `{"error", "detail"}`
with a 4xx or 503, or a 500 that names no file or code.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from edge2core.common.errors import DomainError, Invalid, NotFound
from edge2core.common.events import META_HEADER
from edge2core.common.logging import get_logger
from edge2core.common.metrics import CORE_IMAGES
from edge2core.core.api.deps import Services
from edge2core.core.api.errors import status_of
from edge2core.core.api.receipts import authorise, upload_refusal
from edge2core.core.api.tus import (
    check_content_type,
    check_id,
    check_tus,
    parse_count,
    positive_length,
    tus_headers,
    upload_record,
)
from edge2core.core.ingest.uploads import TUS_EXTENSIONS, TUS_VERSION, ClientGone, UploadState

log = get_logger(__name__)

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


def _refused(exc: Exception, route: str, sha256: str | None) -> JSONResponse:
    """Any failure of a tus route as its answer, with the tus headers: a refusal as itself,
    a client gone mid-body as 400 (what arrived is fsync'd and HEAD reports it), anything
    else as a 500, logged with its traceback here."""
    if isinstance(exc, ClientGone):
        exc = Invalid("the body was cut short", code="client_gone")
    elif not isinstance(exc, DomainError):
        log.error("upload route failed", route=route, sha256=sha256, exc_info=exc)
        exc = DomainError("the core failed to handle this request; its log says why",
                          code="internal_error")
    return upload_refusal(exc, tus_headers())


def _created(state: UploadState, status: int) -> Response:
    headers = {**tus_headers(state), "Location": f"/v1/uploads/{state.sha256}"}
    if state.done is not None:
        CORE_IMAGES.labels(outcome="erased" if state.done.erased else "replay").inc()
    return Response(status_code=status, headers=headers)


@router.options("", status_code=204)
def tus_options(services: Services) -> Response:
    return Response(status_code=204, headers={
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(services.receiver.max_bytes),
    })


@router.post("")
async def create_in_collection(
    services: Services,
    upload_length: str | None = Header(None),
    upload_metadata: str = Header(""),
    meta: str | None = Header(None, alias=META_HEADER),
    tus_resumable: str | None = Header(None),
    authorization: str = Header(""),
) -> Response:
    """tus creation for stock clients: the photo's sha256 comes in Upload-Metadata. Always
    a new upload at offset 0 (see `ResumableUploads.restart`): 201 and its Location."""
    sha256 = None
    try:
        check_tus(tus_resumable)
        length = positive_length(upload_length)
        record = upload_record(upload_metadata, meta, length)
        sha256 = record.sha256
        authorise(services.site_tokens, record.site, authorization)
        if (under_way := await asyncio.to_thread(services.uploads.state, sha256)) is not None:
            authorise(services.site_tokens, under_way.record.site, authorization)  # its site's
        state = await services.uploads.restart(record, length)
    except Exception as exc:
        return _refused(exc, "create", sha256)
    return _created(state, 201)


@router.post("/{sha256}")
def create_upload(
    sha256: str,
    services: Services,
    upload_length: str | None = Header(None),
    upload_metadata: str = Header(""),
    meta: str | None = Header(None, alias=META_HEADER),
    tus_resumable: str | None = Header(None),
    authorization: str = Header(""),
) -> Response:
    """The edge's create-or-find: 201 for a new upload, 200 with the offset reached for one
    under way, or with `X-E2C-Key` for a photo already stored."""
    try:
        check_tus(tus_resumable)
        check_id(sha256)
        length = positive_length(upload_length)
        record = upload_record(upload_metadata, meta, length, sha256)
        authorise(services.site_tokens, record.site, authorization)
        state, new = services.uploads.create(record, length)
    except Exception as exc:
        return _refused(exc, "create", sha256)
    return _created(state, 201 if new else 200)


@router.head("/{sha256}")
def upload_offset(sha256: str, services: Services, authorization: str = Header("")) -> Response:
    """The durable offset. A complete upload that is not stored yet has no `X-E2C-Key`."""
    try:
        check_id(sha256)
        state = services.uploads.head(sha256)
        authorise(services.site_tokens, state.record.site if state else None, authorization)
    except DomainError as exc:
        return Response(status_code=status_of(exc), headers=tus_headers())
    except Exception:
        log.exception("upload route failed", route="head", sha256=sha256)
        return Response(status_code=500, headers=tus_headers())
    if state is None:
        return Response(status_code=404, headers=tus_headers())
    return Response(status_code=200, headers=tus_headers(state))


@router.patch("/{sha256}")
async def append(
    sha256: str,
    request: Request,
    services: Services,
    upload_offset: str | None = Header(None),
    content_type: str = Header(""),
    tus_resumable: str | None = Header(None),
    authorization: str = Header(""),
) -> Response:
    """Bytes at `Upload-Offset`; the PATCH that completes the upload answers once stored."""
    try:
        check_tus(tus_resumable)
        check_id(sha256)
        check_content_type(content_type)
        offset = parse_count(upload_offset, "Upload-Offset", "offset")
        state = await asyncio.to_thread(services.uploads.state, sha256)  # file reads: off the loop
        authorise(services.site_tokens, state.record.site if state else None, authorization)
        state = await services.uploads.append(sha256, offset, request.stream())
    except Exception as exc:
        return _refused(exc, "append", sha256)
    if state.done is not None:
        CORE_IMAGES.labels(outcome="stored" if state.done.created else "replay").inc()
    return Response(status_code=204, headers=tus_headers(state))


@router.delete("/{sha256}", status_code=204)
def terminate(
    sha256: str, services: Services, tus_resumable: str | None = Header(None),
    authorization: str = Header(""),
) -> Response:
    try:
        check_tus(tus_resumable)
        check_id(sha256)
        state = services.uploads.state(sha256)
        if state is None:
            raise NotFound("no upload in progress with this id", code="no_upload")
        authorise(services.site_tokens, state.record.site, authorization)
        services.uploads.discard(sha256)
    except Exception as exc:
        return _refused(exc, "terminate", sha256)
    return Response(status_code=204, headers=tus_headers())
