"""The one-shot upload's fast path: `PUT /v1/images/<sha256>` straight to the receiver.

The one-shot upload is the core's hot path. Requests that carry a valid photo record for the
URL's id (and, where site tokens are set, the site's token) are handled here, without the
framework's routing, dependency solving and its thread hop; the answers are those of the
route (`routers/images.py`), which still serves every other request, including uploads with a
missing or invalid record or a bad token (so their errors are its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edge2core.common.errors import Busy, DomainError
from edge2core.common.events import META_HEADER, PhotoRecord
from edge2core.common.logging import get_logger
from edge2core.core.api.access import site_token_ok
from edge2core.core.api.receipts import receipt_response, upload_refusal
from edge2core.core.ingest.receiver import ImageReceiver

log = get_logger(__name__)

_META_NAME = META_HEADER.lower().encode("latin-1")
RETRY_AFTER_S = 5.0


class ImagePutFastPath:
    """ASGI middleware: well-formed one-shot uploads to the receiver, the rest to `app`."""

    PREFIX = "/v1/images/"

    def __init__(self, app: ASGIApp, receiver: ImageReceiver, site_tokens: dict[str, str]) -> None:
        self.app = app
        self.receiver = receiver
        self.site_tokens = site_tokens

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
            response = await self._receive(record, receive)
        except ClientDisconnect:
            return  # nobody to answer; nothing was stored
        await response(scope, receive, send)

    async def _receive(self, record: PhotoRecord, receive: Receive) -> Response:
        """The receiver's receipt or refusal; a failing store or database is worth a retry."""
        try:
            receipt = await self.receiver.receive(record, _body(receive))
        except DomainError as exc:
            return upload_refusal(exc)
        except ClientDisconnect:
            raise
        except Exception:
            log.exception("one-shot upload failed", sha256=record.sha256)
            return upload_refusal(Busy("the photo could not be stored; send it again later",
                                       code="store_unavailable", retry_after_s=RETRY_AFTER_S))
        return receipt_response(receipt)

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
        if not site_token_ok(self.site_tokens, record.site,
                             (authorization or b"").decode("latin-1")):
            return None
        return record


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
