"""The catalogue's HTTP API (products, promotions, catalogue images) and the audit log.

Errors are JSON `{"error", "detail"}`: 404 `not_found` (unknown SKU or promotion), 409
`duplicate` (adding an existing SKU), 413 `too_large` (an image over 16 MiB), 422 `invalid` (a
malformed body, a change that makes the record invalid, an image key that is not a catalogue
image in the store, bytes that are not an image). Writes take an optional `?by=NAME`, kept in
the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
import re

from pydantic import BaseModel, ConfigDict, Field

from edge2core.common.objectstore import ObjectNotFound
from edge2core.common.products import Product, ProductStatus, Promotion
from edge2core.core.api.errors import (
    IMAGE_TYPES,
    binary_body,
    error_response,
    errors,
)
from edge2core.core.audit import MAX_LIMIT, AuditEvent, AuditLog
from edge2core.core.catalogue.catalogue import (
    IMAGE_KEY_PATTERN,
    MAX_IMAGE_BYTES,
    DuplicateProduct,
    ImportReport,
    InvalidProduct,
    UnknownProduct,
    image_key_for,
    image_media_type,
)
from edge2core.core.api.jsontypes import UtcDateTime, json_float

if TYPE_CHECKING:
    from edge2core.core.api.app import CoreServices

T = TypeVar("T")
By = Query(None, max_length=64, description="who makes the change (kept in the audit log)")


class PromotionIn(Promotion):
    """A promotion as the API reads it: JSON types as the document states them (a number is
    not a date-time, `"5"` is not a number); otherwise `Promotion`."""

    value: json_float(allow_inf_nan=False) | None = None
    starts_at: UtcDateTime
    ends_at: UtcDateTime | None = None


class ProductIn(Product):
    """A product as the API reads it (see `PromotionIn`); `updated_at` is the catalogue's own
    and is ignored."""

    price: json_float(ge=0, allow_inf_nan=False) = Field(description="list price")
    promotions: list[PromotionIn] = Field(default_factory=list)
    updated_at: UtcDateTime | None = Field(default=None, description="ignored: set by the core")


def plain(product: Product) -> Product:
    """The catalogue's own type (what was read as a `ProductIn`)."""
    return Product.model_validate(product.model_dump())


class ProductChange(BaseModel):
    """A partial update: only the fields given change (`image_key: null` removes the image)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    coarse: str | None = Field(default=None, max_length=200)
    price: json_float(ge=0, allow_inf_nan=False) | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    status: ProductStatus | None = None
    description: str | None = Field(default=None, max_length=4000)
    promotions: list[PromotionIn] | None = None
    image_key: str | None = Field(default=None, max_length=200, pattern=IMAGE_KEY_PATTERN,
                                  description="a key from POST /v1/products/images")


class Retirement(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="why it is no longer sold")


class ImportRequest(BaseModel):
    products: list[ProductIn]
    source: str = Field(default="", max_length=500, description="where the records came from")


class StoredImage(BaseModel):
    key: str
    sha256: str
    media_type: str
    created: bool


class ImageTooLarge(ValueError):
    """A catalogue image over MAX_IMAGE_BYTES (HTTP 413)."""


def _error(status: int, code: str, exc: Exception) -> JSONResponse:
    return error_response(status, code, str(exc.args[0] if exc.args else exc))


def _guarded(call: Callable[[], T]) -> T | JSONResponse:
    try:
        return call()
    except UnknownProduct as exc:
        return _error(404, "not_found", exc)
    except DuplicateProduct as exc:
        return _error(409, "duplicate", exc)
    except InvalidProduct as exc:
        return _error(422, "invalid", exc)


def catalogue_router(services: CoreServices) -> APIRouter:
    router = APIRouter(tags=["catalogue"])
    catalogue = services.catalogue
    store = services.store

    def check_images(keys: list[str | None]) -> None:
        for key in keys:
            if key is not None and not re.fullmatch(IMAGE_KEY_PATTERN, key):
                raise InvalidProduct(f"image_key {key[:80]!r} is not a catalogue image key; "
                                     "upload the image first (POST /v1/products/images)")
            if key is not None and not store.exists(key):
                raise InvalidProduct(f"image_key {key!r} is not in the object store; upload "
                                     "the image first (POST /v1/products/images)")

    def store_bytes(data: bytes) -> StoredImage:
        key, media_type = image_key_for(data)
        created = not store.exists(key)
        if created:
            store.put(key, data)
        return StoredImage(key=key, sha256=key.rsplit("/", 1)[-1].split(".")[0],
                           media_type=media_type, created=created)

    async def body_of(request: Request) -> bytes:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_IMAGE_BYTES:
            raise ImageTooLarge(f"a catalogue image is at most {MAX_IMAGE_BYTES} bytes")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_IMAGE_BYTES:
                raise ImageTooLarge(f"a catalogue image is at most {MAX_IMAGE_BYTES} bytes")
        return bytes(data)

    # --- products ------------------------------------------------------------------------

    @router.get("/v1/products")
    def list_products(status: ProductStatus | None = None) -> list[Product]:
        return catalogue.list(status)

    @router.post("/v1/products", status_code=201, response_model=Product,
                 responses=errors(409, 422))
    def add_product(product: ProductIn, by: str | None = By) -> Any:
        def add() -> Product:
            check_images([product.image_key])
            return catalogue.add(plain(product), by=by)

        return _guarded(add)

    @router.put("/v1/products", responses=errors(422))
    def upsert_products(products: list[ProductIn], by: str | None = By) -> Any:
        """Bulk insert-or-replace of whole records (promotions included)."""
        def upsert() -> dict[str, int]:
            check_images([p.image_key for p in products])
            return {"upserted": catalogue.upsert([plain(p) for p in products], by=by)}

        return _guarded(upsert)

    @router.post("/v1/products/import", response_model=ImportReport, responses=errors(422))
    def import_products(req: ImportRequest, by: str | None = By) -> Any:
        """Merge imported records: new SKUs are added; for known ones only name, coarse
        class, description and image are updated (prices, status, promotions stay)."""
        def run() -> ImportReport:
            check_images([p.image_key for p in req.products])
            return catalogue.import_products([plain(p) for p in req.products], by=by,
                                             source=req.source)

        return _guarded(run)

    @router.post("/v1/products/images", response_model=StoredImage, responses={
        200: {"description": "Already stored", "model": StoredImage},
        201: {"description": "Stored", "model": StoredImage}, **errors(413, 422)},
        openapi_extra=binary_body(*IMAGE_TYPES, description="the image (JPEG, PNG or WebP)"))
    async def upload_image(request: Request) -> Any:
        """A catalogue image (JPEG, PNG, WebP) as the raw body, stored under its sha256."""
        try:
            data = await body_of(request)
            stored = await run_in_threadpool(store_bytes, data)
        except ImageTooLarge as exc:
            return _error(413, "too_large", exc)
        except InvalidProduct as exc:
            return _error(422, "invalid", exc)
        return JSONResponse(stored.model_dump(), status_code=201 if stored.created else 200)

    @router.get("/v1/products/{sku}", response_model=Product, responses=errors(404))
    def get_product(sku: str) -> Any:
        return _guarded(lambda: catalogue.require(sku))

    @router.patch("/v1/products/{sku}", response_model=Product, responses=errors(404, 422))
    def change_product(sku: str, change: ProductChange, by: str | None = By) -> Any:
        fields = change.model_dump(exclude_unset=True)
        if "promotions" in fields:
            fields["promotions"] = [Promotion.model_validate(p.model_dump())
                                    for p in change.promotions or []]

        def run() -> Product:
            if "image_key" in fields:
                check_images([fields["image_key"]])
            return catalogue.change(sku, by=by, **fields)

        return _guarded(run)

    @router.post("/v1/products/{sku}/retire", response_model=Product,
                 responses=errors(404, 422))
    def retire_product(sku: str, retirement: Retirement, by: str | None = By) -> Any:
        return _guarded(lambda: catalogue.retire(sku, retirement.reason, by=by))

    @router.post("/v1/products/{sku}/promotions", response_model=Product,
                 responses=errors(404, 422))
    def promote_product(sku: str, promotion: PromotionIn, by: str | None = By) -> Any:
        """Add a promotion, or replace the product's promotion with the same id."""
        promotion = Promotion.model_validate(promotion.model_dump())
        return _guarded(lambda: catalogue.promote(sku, promotion, by=by))

    @router.delete("/v1/products/{sku}/promotions/{promotion_id}", response_model=Product,
                   responses=errors(404))
    def withdraw_promotion(sku: str, promotion_id: str, by: str | None = By) -> Any:
        return _guarded(lambda: catalogue.withdraw_promotion(sku, promotion_id, by=by))

    @router.put("/v1/products/{sku}/image", response_model=Product,
                responses=errors(404, 413, 422),
                openapi_extra=binary_body(*IMAGE_TYPES, description="the image"))
    async def put_product_image(sku: str, request: Request, by: str | None = By) -> Any:
        """Set a product's catalogue image from the raw body (JPEG, PNG, WebP)."""
        try:
            data = await body_of(request)
        except ImageTooLarge as exc:
            return _error(413, "too_large", exc)

        def run() -> Product:
            catalogue.require(sku)
            stored = store_bytes(data)
            return catalogue.change(sku, by=by, image_key=stored.key)

        return await run_in_threadpool(_guarded, run)

    @router.get("/v1/products/{sku}/image", response_class=Response, responses={
        200: {"description": "The catalogue image",
              "content": {m: {"schema": {"type": "string", "format": "binary"}}
                          for m in IMAGE_TYPES}},
        **errors(404)})
    def product_image(sku: str) -> Response:
        product = catalogue.get(sku)
        if product is None:
            return _error(404, "not_found", UnknownProduct(f"no product {sku!r} in the catalogue"))
        if product.image_key is None:
            return _error(404, "not_found", LookupError(f"{sku} has no catalogue image"))
        try:
            data = store.get(product.image_key)
        except ObjectNotFound:
            return _error(404, "not_found", LookupError(f"the image of {sku} is gone"))
        etag = product.image_key.rsplit("/", 1)[-1].split(".")[0]
        return Response(data, media_type=image_media_type(product.image_key),
                        headers={"ETag": f'"{etag}"', "Cache-Control": "max-age=300"})

    # --- before /v1/products: kept for the edge's replica pull and older clients ---------

    @router.get("/v1/catalogue/products", deprecated=True)
    def legacy_list() -> list[Product]:
        return catalogue.list()

    @router.put("/v1/catalogue/products", deprecated=True, responses=errors(422))
    def legacy_upsert(products: list[ProductIn]) -> Any:
        return upsert_products(products, None)

    @router.get("/v1/catalogue/products/{sku}", deprecated=True, response_model=Product,
                responses=errors(404))
    def legacy_get(sku: str) -> Any:
        return get_product(sku)

    # --- audit log -----------------------------------------------------------------------

    audit = AuditLog(services.sessions)

    @router.get("/v1/audit", tags=["audit"])
    def audit_events(
        kind_prefix: str | None = Query(None, description='e.g. "catalogue." or "model.promoted"'),
        subject: str | None = Query(None, description="a SKU, a model version, ..."),
        since: UtcDateTime | None = None,
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> list[AuditEvent]:
        """Newest first."""
        return audit.query(kind_prefix, subject, since=since, limit=limit)

    return router

