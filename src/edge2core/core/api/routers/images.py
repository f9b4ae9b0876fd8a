"""Photos at the core: whether one arrived (HEAD, what an edge asks before sending), the
one-shot upload (PUT; well-formed ones take `fast_put.ImagePutFastPath`, with the same
answers), a photo's bytes (GET, the admin's only) and counts by source (`/v1/stats`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from edge2core.common.errors import DomainError, NotFound
from edge2core.common.events import META_HEADER
from edge2core.common.objectstore import ObjectNotFound
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import binary_answer, binary_body, errors
from edge2core.core.api.params import PhotoId
from edge2core.core.api.receipts import one_shot_record, receipt_response, upload_refusal
from edge2core.core.db.schema import ImageRow

router = APIRouter(prefix="/v1", tags=["images"])


@router.head("/images/{sha256}", response_class=Response, responses={
    200: {"description": "The core has the photo (or erased it)"},
    404: {"description": "The core does not have the photo"}})
def image_head(sha256: str, services: Services) -> Response:
    return Response(status_code=200 if services.receiver.existing(sha256) else 404)


@router.put("/images/{sha256}", responses={
    200: {"description": "Already stored (or erased: `erased` is true)"},
    201: {"description": "Stored: the bytes are durable and match the id"},
    **errors(400, 401, 413, 415, 422)},
    openapi_extra=binary_body("image/jpeg", description="The prepared photo"))
async def upload_image(
    sha256: str, request: Request, services: Services,
    meta: str = Header(alias=META_HEADER), authorization: str = Header(""),
) -> JSONResponse:
    """The photo's bytes, its record in `X-E2C-Meta`; answered once they are durable."""
    try:
        record = one_shot_record(services.site_tokens, sha256, meta, authorization)
        receipt = await services.receiver.receive(record, request.stream())
    except DomainError as exc:
        return upload_refusal(exc)
    return receipt_response(receipt)


@router.get("/images/{sha256}", response_class=Response, responses={
    200: binary_answer("image/jpeg", "The photo's bytes"), **errors(404)})
def image_bytes(sha256: PhotoId, services: Services) -> Response:
    with services.sessions() as session:
        row = session.get(ImageRow, sha256)
    if row is None:
        raise NotFound(f"no photo {sha256}")
    try:
        data = services.store.get(row.key)
    except ObjectNotFound as exc:
        raise NotFound(f"the bytes of photo {sha256} are gone") from exc
    return Response(data, media_type="image/jpeg", headers={"X-E2C-Sha256": sha256})


@router.get("/stats")
def stats(services: Services) -> dict[str, Any]:
    """How many photos the core holds, by source (kiosk, shopper, ...)."""
    query = select(ImageRow.source, func.count()).group_by(ImageRow.source)
    with services.sessions() as session:
        rows = session.execute(query).all()
    by_source = {source: count for source, count in rows}
    return {"images": sum(by_source.values()), "by_source": by_source}
