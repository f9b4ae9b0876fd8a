"""What both upload paths (the one-shot PUT and its fast path, the tus routes) answer and
count: a receipt when the photo is durable, a refusal otherwise, each counted in
`e2c_core_images_total{outcome}` by its code. Also the one-shot PUT's own check of the photo
record and the site's token, shared by the route and the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edge2core.common.errors import DomainError, Unauthorised
from edge2core.common.events import META_HEADER, PhotoRecord
from edge2core.common.metrics import CORE_IMAGES
from edge2core.core.api.access import site_token_ok
from edge2core.core.api.errors import refusal_response
from edge2core.core.api.tus import bad_metadata, validation_summary
from edge2core.core.ingest.accepting import Receipt


def receipt_response(receipt: Receipt) -> JSONResponse:
    """The answer to a one-shot upload (counted), from the route or the fast path."""
    CORE_IMAGES.labels(outcome="stored" if receipt.created else "replay").inc()
    return JSONResponse(
        {"sha256": receipt.sha256, "key": receipt.key, "size": receipt.size,
         "created": receipt.created, "erased": receipt.erased},
        status_code=201 if receipt.created else 200,
    )


def upload_refusal(exc: DomainError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A refused upload's answer (counted by its code), for every upload path."""
    CORE_IMAGES.labels(outcome=exc.code).inc()
    return refusal_response(exc, headers)


def unauthorised(site: str | None) -> Unauthorised:
    return Unauthorised(f"no valid token for site {site!r}", code="unauthorized")


def authorise(site_tokens: Mapping[str, str], site: str | None, authorization: str) -> None:
    """Refuse (401 `unauthorized`) a request without `site`'s token (any site's, for an
    upload not known here)."""
    if not site_token_ok(site_tokens, site, authorization):
        raise unauthorised(site)


def one_shot_record(site_tokens: Mapping[str, str], sha256: str, meta: str,
                    authorization: str) -> PhotoRecord:
    """The photo record of `PUT /v1/images/<sha256>` (the `X-E2C-Meta` header), checked
    against the URL and the site's token: 401 before anything about the record is said to a
    caller without any site's token."""
    if not site_token_ok(site_tokens, None, authorization):
        raise Unauthorised("no valid site token", code="unauthorized")
    try:
        record = PhotoRecord.model_validate_json(meta)
    except ValidationError as exc:
        raise bad_metadata(f"{META_HEADER} is invalid: {validation_summary(exc)}") from exc
    if record.sha256 != sha256:
        raise bad_metadata("the URL and the metadata name different ids")
    authorise(site_tokens, record.site, authorization)
    return record
