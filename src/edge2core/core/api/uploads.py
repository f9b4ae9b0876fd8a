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

Every answer to a request these routes could not serve is `{"error", "detail"}` with a 4xx or
503: headers are parsed here (never by the framework's validation) so that no input reaches
a 500, and details never name files or code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from edge2core.common.events import META_HEADER, SHA256_PATTERN, PhotoRecord
from edge2core.common.logging import get_logger
from edge2core.common.metrics import CORE_IMAGES
from edge2core.core.api.access import site_token_ok
from edge2core.core.ingest.receiver import Receipt, UploadError
from edge2core.core.ingest.uploads import TUS_EXTENSIONS, TUS_VERSION, ClientGone, UploadState

if TYPE_CHECKING:
    from edge2core.core.api.app import CoreServices

log = get_logger(__name__)

OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# tus lengths and offsets: non-negative decimal integers. Digits only (int() would also take
# "+5", " 5" and "5_0"); the cap keeps int() far from its digit limit, and any value this
# long is out of range anyway (refused as too large or a mismatch, never parsed as garbage).
_COUNT = re.compile(r"[0-9]{1,64}")
_SHA256 = re.compile(SHA256_PATTERN)
# Upload-Metadata keys a stock client may send instead of `record`: the record's own fields.
_RECORD_FIELDS = frozenset(PhotoRecord.model_fields)
_JSON_FIELDS = frozenset({"top_guesses", "redaction", "quality"})
_NEEDS_RECORD = (
    "Upload-Metadata needs `record` (the photo record as JSON) or the record's fields: "
    "`sha256`, `site`, `device`, `source`, `width`, `height` and any others"
)


def parse_upload_metadata(value: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64(value)` pairs; keys are unique."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, _, encoded = item.partition(" ")
        encoded = encoded.strip()
        if key in pairs:
            raise UploadError(400, "bad_metadata", f"Upload-Metadata gives {key[:64]!r} twice")
        try:
            pairs[key] = base64.b64decode(encoded, validate=True).decode() if encoded else ""
        except ValueError as exc:  # not base64, not ASCII, or not UTF-8 once decoded
            raise UploadError(
                400, "bad_metadata", f"Upload-Metadata {key[:64]!r} is not base64 of UTF-8 text"
            ) from exc
    return pairs


def parse_count(value: str | None, header: str, what: str) -> int:
    """A tus length or offset header; refuses (400 `no_<what>`, `bad_<what>`) what is missing
    or not a plain integer."""
    if value is None:
        raise UploadError(400, f"no_{what}", f"{header} is required")
    if not _COUNT.fullmatch(value.strip()):
        raise UploadError(
            400, f"bad_{what}", f"{header} must be a non-negative integer in decimal digits"
        )
    return int(value)


def positive_length(value: str | None) -> int:
    """Upload-Length: a photo has at least one byte (no deferred lengths here)."""
    length = parse_count(value, "Upload-Length", "length")
    if length < 1:
        raise UploadError(400, "bad_length", "Upload-Length must be a positive integer")
    return length


def upload_record(
    upload_metadata: str, meta: str | None, length: int, sha256: str | None = None
) -> PhotoRecord:
    """The photo record an upload declares: `X-E2C-Meta`, else Upload-Metadata `record` (the
    JSON, as the edge sends it), else one Upload-Metadata key per record field (stock
    clients). `size` defaults to Upload-Length; `sha256` to the URL's id."""
    pairs = parse_upload_metadata(upload_metadata)
    raw = meta or pairs.get("record")
    try:
        if raw:
            record = PhotoRecord.model_validate_json(raw)
        else:
            record = PhotoRecord.model_validate(_record_fields(pairs, length, sha256))
    except ValidationError as exc:
        raise UploadError(
            400, "bad_metadata", f"the photo record is invalid: {_validation_summary(exc)}"
        ) from exc
    if sha256 is not None and record.sha256 != sha256:
        raise UploadError(400, "bad_metadata", "the URL and the record name different ids")
    return record


def _record_fields(pairs: dict[str, str], length: int, sha256: str | None) -> dict[str, object]:
    fields: dict[str, object] = {k: v for k, v in pairs.items() if k in _RECORD_FIELDS and v}
    if not fields:
        raise UploadError(400, "bad_metadata", _NEEDS_RECORD)
    if sha256 is not None:
        fields.setdefault("sha256", sha256)
    fields.setdefault("size", length)
    for name in _JSON_FIELDS & fields.keys():
        try:
            fields[name] = json.loads(str(fields[name]))
        except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
            raise UploadError(400, "bad_metadata", f"Upload-Metadata {name!r} is not JSON") from exc
    return fields


def _validation_summary(exc: ValidationError) -> str:
    """Which fields are wrong and why, without echoing the input or pointing anywhere."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        if error["type"] == "json_invalid":
            return "not valid JSON"
        where = ".".join(str(part) for part in error["loc"]) or "record"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


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


def _failure(what: str, sha256: str | None) -> JSONResponse:
    """An error nobody foresaw: logged with its traceback here, answered without one."""
    log.exception("upload route failed", route=what, sha256=sha256)
    return _refusal(UploadError(
        500, "internal_error", "the core failed to handle this request; its log says why",
    ))


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
        if not _SHA256.fullmatch(sha256):
            raise UploadError(400, "bad_id", "an upload id is the photo's sha256 (64 hex digits)")

    def created(state: UploadState, status: int) -> Response:
        headers = {**_tus_headers(state), "Location": f"/v1/uploads/{state.sha256}"}
        if state.done is not None:
            CORE_IMAGES.labels(outcome="erased" if state.done.erased else "replay").inc()
        return Response(status_code=status, headers=headers)

    @router.options("/v1/uploads", status_code=204)
    def tus_options() -> Response:
        return Response(status_code=204, headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(services.receiver.max_bytes),
        })

    @router.post("/v1/uploads")
    async def create_in_collection(
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
            authorize(record.site, authorization)
            if (under_way := await asyncio.to_thread(uploads.state, sha256)) is not None:
                authorize(under_way.record.site, authorization)  # only its site may drop it
            state = await uploads.restart(record, length)
        except UploadError as exc:
            return _refusal(exc)
        except Exception:  # noqa: BLE001 (answered as JSON, logged with its traceback)
            return _failure("create", sha256)
        return created(state, 201)

    @router.post("/v1/uploads/{sha256}")
    def create_upload(
        sha256: str,
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
            authorize(record.site, authorization)
            state, new = uploads.create(record, length)
        except UploadError as exc:
            return _refusal(exc)
        except Exception:  # noqa: BLE001
            return _failure("create", sha256)
        return created(state, 201 if new else 200)

    @router.head("/v1/uploads/{sha256}")
    def upload_offset(sha256: str, authorization: str = Header("")) -> Response:
        """The durable offset. A complete upload that is not stored yet has no `X-E2C-Key`."""
        try:
            check_id(sha256)
            state = uploads.head(sha256)
            authorize(state.record.site if state else None, authorization)
        except UploadError as exc:
            return Response(status_code=exc.status, headers=_tus_headers())
        except Exception:  # noqa: BLE001
            log.exception("upload route failed", route="head", sha256=sha256)
            return Response(status_code=500, headers=_tus_headers())
        if state is None:
            return Response(status_code=404, headers=_tus_headers())
        return Response(status_code=200, headers=_tus_headers(state))

    @router.patch("/v1/uploads/{sha256}")
    async def append(
        sha256: str,
        request: Request,
        upload_offset: str | None = Header(None),
        content_type: str = Header(""),
        tus_resumable: str | None = Header(None),
        authorization: str = Header(""),
    ) -> Response:
        try:
            check_tus(tus_resumable)
            check_id(sha256)
            if content_type.split(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
                raise UploadError(415, "content_type", f"PATCH bodies are {OFFSET_CONTENT_TYPE}")
            offset = parse_count(upload_offset, "Upload-Offset", "offset")
            state = await asyncio.to_thread(uploads.state, sha256)  # file reads: off the loop
            authorize(state.record.site if state else None, authorization)
            state = await uploads.append(sha256, offset, request.stream())
        except UploadError as exc:
            return _refusal(exc)
        except ClientGone:
            # Nobody is listening; what arrived is fsync'd and HEAD reports it.
            return _refusal(UploadError(400, "client_gone", "the body was cut short"))
        except Exception:  # noqa: BLE001
            return _failure("append", sha256)
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
        except Exception:  # noqa: BLE001
            return _failure("terminate", sha256)
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
        except ClientDisconnect:
            return  # nobody to answer; nothing was stored
        except Exception:  # noqa: BLE001 (the store or the database failed: worth a retry)
            log.exception("one-shot upload failed", sha256=record.sha256)
            response = upload_refusal(UploadError(
                503, "store_unavailable", "the photo could not be stored; send it again later",
                {"Retry-After": "5"},
            ))
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
