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
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from edge2core.common.errors import DomainError, Invalid, NotFound
from edge2core.common.events import META_HEADER, SHA256_PATTERN
from edge2core.common.logging import get_logger
from edge2core.common.metrics import CORE_IMAGES
from edge2core.core.api.deps import Services
from edge2core.core.api.errors import Error, status_of
from edge2core.core.api.receipts import authorise, upload_refusal
from edge2core.core.api.tus import (
    LOCATION_HEADER,
    META_PARAMETER,
    OFFSET_BODY,
    TUS_RESUMABLE_PARAMETER,
    TUS_VERSION_HEADER,
    UPLOAD_HEADERS,
    UPLOAD_LENGTH_PARAMETER,
    UPLOAD_METADATA_PARAMETER,
    UPLOAD_OFFSET_PARAMETER,
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

# The document of these routes: they read their headers themselves (core/api/tus.py), so the
# parameters, the PATCH body and every status they answer are stated here.
SHA256_PARAMETER = {"name": "sha256", "in": "path", "required": True,
                    "description": "the upload's id: the photo's sha256 (else 400 `bad_id`)",
                    "schema": {"type": "string", "pattern": SHA256_PATTERN}}
ERRORS = {
    400: "A malformed tus header, upload id or Upload-Metadata, or a body cut short "
         "(`no_length`, `bad_length`, `no_offset`, `bad_offset`, `bad_id`, `bad_metadata`, "
         "`client_gone`)",
    401: "No valid token of the upload's site (any site's before the record is known)",
    404: "No such upload (never created, expired, finished, erased): `no_upload`",
    409: "The upload is not at Upload-Offset (`offset_mismatch`, with its Upload-Offset)",
    412: "Tus-Resumable is not 1.0.0 (`tus_version`, with Tus-Version)",
    413: "Over the core's size limit, or past Upload-Length",
    415: "A PATCH body that is not application/offset+octet-stream, or not a photo the core "
         "takes",
    422: "The bytes or the record are not what they claim (size, hash, ids, privacy)",
    423: "Another request is appending to this upload (`upload_busy`): ask HEAD, try again",
    500: "Internal error (logged with its traceback at the core)",
    503: "The core could not keep the bytes or store the photo yet; what arrived is kept "
         "(its Upload-Offset, Retry-After)",
}


def _answers(success: dict[int, tuple[str, dict[str, Any]]], *errors: int) -> dict[int | str, Any]:
    """`responses=`: the successes (a description and their headers, no body) and these
    errors as `Error`, all with the tus headers."""
    answers: dict[int | str, Any] = {
        status: {"description": text, "headers": headers}
        for status, (text, headers) in success.items()}
    for status in errors:
        answers[status] = {"model": Error, "description": ERRORS[status],
                           "headers": {"Tus-Resumable": TUS_VERSION_HEADER}}
    return answers


def _extra(*parameters: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"parameters": list(parameters), **more}


CREATED = {**UPLOAD_HEADERS, "Location": LOCATION_HEADER}


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


def _any_site(services: Services, authorization: str) -> None:
    """401 before anything about the request is said to a caller without any site's token
    (the upload's own site is checked once its record is known)."""
    authorise(services.site_tokens, None, authorization)


@router.options("", status_code=204, response_class=Response, responses={204: {
    "description": "What this server supports", "headers": {
        "Tus-Resumable": TUS_VERSION_HEADER, "Tus-Version": TUS_VERSION_HEADER,
        "Tus-Extension": {"required": True, "description": "the tus extensions supported",
                          "schema": {"type": "string"}},
        "Tus-Max-Size": {"required": True, "description": "the largest upload, in bytes",
                         "schema": {"type": "integer", "minimum": 0}}}}})
def tus_options(services: Services) -> Response:
    return Response(status_code=204, headers={
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(services.receiver.max_bytes),
    })


@router.post(
    "", status_code=201, response_class=Response,
    responses=_answers({201: ("A new upload at offset 0, at its Location", CREATED)},
                       400, 401, 412, 413, 422, 423, 500),
    openapi_extra=_extra(TUS_RESUMABLE_PARAMETER, UPLOAD_LENGTH_PARAMETER,
                         UPLOAD_METADATA_PARAMETER, META_PARAMETER))
async def create_in_collection(request: Request, services: Services) -> Response:
    """tus creation for stock clients: the photo's sha256 comes in Upload-Metadata. Always
    a new upload at offset 0 (see `ResumableUploads.restart`): 201 and its Location."""
    sha256 = None
    headers = request.headers
    authorization = headers.get("authorization", "")
    try:
        check_tus(headers.get("tus-resumable"))
        _any_site(services, authorization)
        length = positive_length(headers.get("upload-length"))
        record = upload_record(headers.get("upload-metadata", ""), headers.get(META_HEADER),
                               length)
        sha256 = record.sha256
        authorise(services.site_tokens, record.site, authorization)
        if (under_way := await asyncio.to_thread(services.uploads.state, sha256)) is not None:
            authorise(services.site_tokens, under_way.record.site, authorization)  # its site's
        state = await services.uploads.restart(record, length)
    except Exception as exc:
        return _refused(exc, "create", sha256)
    return _created(state, 201)


@router.post(
    "/{sha256}", status_code=201, response_class=Response,
    responses=_answers({
        200: ("The upload under way (its Upload-Offset), or the photo already stored "
              "(`X-E2C-Key`)", CREATED),
        201: ("A new upload at offset 0", CREATED)}, 400, 401, 412, 413, 422, 500),
    openapi_extra=_extra(SHA256_PARAMETER, TUS_RESUMABLE_PARAMETER, UPLOAD_LENGTH_PARAMETER,
                         UPLOAD_METADATA_PARAMETER, META_PARAMETER))
def create_upload(request: Request, services: Services) -> Response:
    """The edge's create-or-find: 201 for a new upload, 200 with the offset reached for one
    under way, or with `X-E2C-Key` for a photo already stored."""
    sha256 = request.path_params["sha256"]
    headers = request.headers
    authorization = headers.get("authorization", "")
    try:
        check_tus(headers.get("tus-resumable"))
        check_id(sha256)
        _any_site(services, authorization)
        length = positive_length(headers.get("upload-length"))
        record = upload_record(headers.get("upload-metadata", ""), headers.get(META_HEADER),
                               length, sha256)
        authorise(services.site_tokens, record.site, authorization)
        state, new = services.uploads.create(record, length)
    except Exception as exc:
        return _refused(exc, "create", sha256)
    return _created(state, 201 if new else 200)


@router.head(
    "/{sha256}", response_class=Response,
    responses=_answers({200: ("Where the upload stands (a stored photo reads as a finished "
                              "upload, with `X-E2C-Key`)", UPLOAD_HEADERS)},
                       400, 401, 404, 500),
    openapi_extra=_extra(SHA256_PARAMETER))
def upload_offset(request: Request, services: Services) -> Response:
    """The durable offset. A complete upload that is not stored yet has no `X-E2C-Key`."""
    sha256 = request.path_params["sha256"]
    try:
        check_id(sha256)
        state = services.uploads.head(sha256)
        authorise(services.site_tokens, state.record.site if state else None,
                  request.headers.get("authorization", ""))
    except DomainError as exc:
        return Response(status_code=status_of(exc), headers=tus_headers())
    except Exception:
        log.exception("upload route failed", route="head", sha256=sha256)
        return Response(status_code=500, headers=tus_headers())
    if state is None:
        return Response(status_code=404, headers=tus_headers())
    return Response(status_code=200, headers=tus_headers(state))


@router.patch(
    "/{sha256}", status_code=204, response_class=Response,
    responses=_answers({204: ("Appended: the new Upload-Offset; the PATCH that completes the "
                              "upload answers once the photo is stored, with `X-E2C-Key`",
                              UPLOAD_HEADERS)},
                       400, 401, 404, 409, 412, 413, 415, 422, 423, 500, 503),
    openapi_extra=_extra(SHA256_PARAMETER, TUS_RESUMABLE_PARAMETER, UPLOAD_OFFSET_PARAMETER,
                         **OFFSET_BODY))
async def append(request: Request, services: Services) -> Response:
    """Bytes at `Upload-Offset`; the PATCH that completes the upload answers once stored."""
    sha256 = request.path_params["sha256"]
    headers = request.headers
    try:
        check_tus(headers.get("tus-resumable"))
        check_id(sha256)
        _any_site(services, headers.get("authorization", ""))
        check_content_type(headers.get("content-type", ""))
        offset = parse_count(headers.get("upload-offset"), "Upload-Offset", "offset")
        state = await asyncio.to_thread(services.uploads.state, sha256)  # file reads: off the loop
        authorise(services.site_tokens, state.record.site if state else None,
                  headers.get("authorization", ""))
        state = await services.uploads.append(sha256, offset, request.stream())
    except Exception as exc:
        return _refused(exc, "append", sha256)
    if state.done is not None:
        CORE_IMAGES.labels(outcome="stored" if state.done.created else "replay").inc()
    return Response(status_code=204, headers=tus_headers(state))


@router.delete(
    "/{sha256}", status_code=204, response_class=Response,
    responses=_answers({204: ("The upload is dropped", {"Tus-Resumable": TUS_VERSION_HEADER})},
                       400, 401, 404, 412, 500),
    openapi_extra=_extra(SHA256_PARAMETER, TUS_RESUMABLE_PARAMETER))
def terminate(request: Request, services: Services) -> Response:
    sha256 = request.path_params["sha256"]
    headers = request.headers
    try:
        check_tus(headers.get("tus-resumable"))
        check_id(sha256)
        _any_site(services, headers.get("authorization", ""))
        state = services.uploads.state(sha256)
        if state is None:
            raise NotFound("no upload in progress with this id", code="no_upload")
        authorise(services.site_tokens, state.record.site, headers.get("authorization", ""))
        services.uploads.discard(sha256)
    except Exception as exc:
        return _refused(exc, "terminate", sha256)
    return Response(status_code=204, headers=tus_headers())
