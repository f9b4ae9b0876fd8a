"""Photos straight to S3 (`ingest.direct`): a presigned PUT, then the commit.

    POST /v1/photos/uploads/presigned   201 a presigned PUT (url, key, headers, expires_at);
                                        200 the receipt of a photo already stored (or erased);
                                        409 `direct_unavailable`: send through the core instead
    POST /v1/photos/<sha256>/commit     201 stored / 200 already stored: the one-shot PUT's
                                        receipt; 409 `not_uploaded`, `object_size_mismatch`,
                                        `object_hash_mismatch`: PUT again, then commit

Both take `{"record": <photo record>}` and the site's token, like the other upload routes, and
are rate-limited with them (`access.SiteRateLimit`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from edge2core.common.errors import DomainError
from edge2core.common.events import PhotoRecord
from edge2core.core.api.deps import Services
from edge2core.core.api.errors import refusal_response
from edge2core.core.api.openapi import errors
from edge2core.core.api.params import PhotoId
from edge2core.core.api.receipts import authorise, receipt_response, upload_refusal
from edge2core.core.api.tus import bad_metadata
from edge2core.core.ingest.direct import DirectUnavailable, DirectUploads, PresignedPut

router = APIRouter(prefix="/v1/photos", tags=["photos"])


class DirectUploadRequest(BaseModel):
    record: PhotoRecord = Field(description="the photo's record, as in `X-E2C-Meta` of the one-shot PUT")


class PresignedUpload(BaseModel):
    """PUT the photo's bytes to `url` with exactly `headers`, before `expires_at`; then commit."""

    method: Literal["PUT"] = "PUT"
    url: str = Field(description="the presigned URL (S3 as the sites reach it)")
    key: str = Field(description="where the upload lands in the store, until its commit")
    headers: dict[str, str] = Field(description="headers the PUT must carry (signed)")
    expires_at: datetime


class StoredPhoto(BaseModel):
    """The receipt every upload path answers: `key` is the stored object's (the proof of
    storage), empty only with `erased`."""

    sha256: str
    key: str
    size: int
    created: bool
    erased: bool


RECEIPT = {"model": StoredPhoto}
DIRECT_409 = ("No direct uploads here (`direct_unavailable`: send through the core), or the "
              "upload is missing or not the photo (`not_uploaded`, `object_size_mismatch`, "
              "`object_hash_mismatch`: PUT it again, then commit)")


def _direct(services: Services, authorization: str) -> DirectUploads:
    """401 before anything is said to a caller without any site's token; then 409 where
    this core takes no direct uploads."""
    authorise(services.site_tokens, None, authorization)
    if services.direct is None:
        raise DirectUnavailable("this core's object store takes photos through the core only: "
                                "PUT /v1/images/<sha256>")
    return services.direct


@router.post("/uploads/presigned", status_code=201, response_model=PresignedUpload, responses={
    200: {**RECEIPT, "description": "Already stored (or erased: `erased` is true): nothing to send"},
    201: {"description": "A presigned PUT for the photo"},
    409: {"description": DIRECT_409}, **errors(401, 413, 422)})
def presign(body: DirectUploadRequest, services: Services,
            authorization: str = Header("")) -> Any:
    """A presigned PUT of the photo into the object store, sized and checksummed by its
    record (the store refuses any other bytes)."""
    record = body.record
    try:
        direct = _direct(services, authorization)
        authorise(services.site_tokens, record.site, authorization)
        granted = direct.grant(record)
    except DirectUnavailable as exc:  # not a photo's outcome: not counted as one
        return refusal_response(exc)
    except DomainError as exc:
        return upload_refusal(exc)
    if not isinstance(granted, PresignedPut):
        return receipt_response(granted)
    return JSONResponse(PresignedUpload(
        url=granted.url, key=granted.key, headers=granted.headers,
        expires_at=granted.expires_at).model_dump(mode="json"), status_code=201)


@router.post("/{sha256}/commit", status_code=201, response_model=StoredPhoto, responses={
    200: {**RECEIPT, "description": "Already stored (or erased: `erased` is true)"},
    201: {"description": "Verified, checked, stored and recorded: the bytes are durable and "
                         "match the id"},
    409: {"description": DIRECT_409}, **errors(400, 401, 413, 415, 422, 503)})
def commit(sha256: PhotoId, body: DirectUploadRequest, services: Services,
           authorization: str = Header("")) -> JSONResponse:
    """Record a photo PUT to its presigned URL, once the core has verified and checked it:
    the one-shot PUT's receipt."""
    record = body.record
    try:
        direct = _direct(services, authorization)
        if record.sha256 != sha256:
            raise bad_metadata("the URL and the record name different ids")
        authorise(services.site_tokens, record.site, authorization)
        receipt = direct.commit(record)
    except DirectUnavailable as exc:
        return refusal_response(exc)
    except DomainError as exc:
        return upload_refusal(exc)
    return receipt_response(receipt)
