"""The catalogue over HTTP: products, their promotions and catalogue images.

Errors are the one body: 404 `not_found` (unknown SKU or promotion), 409 `duplicate` (adding
an existing SKU), 413 `too_large` (an image over 16 MiB), 422 `invalid` (a malformed body, a
change that makes the record invalid, an image key that is not a catalogue image in the store,
bytes that are not an image). Writes take an optional `?by=NAME`, kept in the audit log.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from edge2core.common.errors import NotFound, TooLarge
from edge2core.common.objectstore import ObjectNotFound, ObjectStore
from edge2core.common.products import Product, ProductStatus, Promotion
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import BINARY, IMAGE_TYPES, binary_body, errors
from edge2core.core.catalogue.catalogue import (
    IMAGE_KEY_PATTERN,
    MAX_IMAGE_BYTES,
    ImportReport,
    InvalidProduct,
    image_media_type,
    store_image,
)
from edge2core.core.jsontypes import JSON_NUMBER, UtcDateTime

router = APIRouter(prefix="/v1/products", tags=["catalogue"])
By = Query(None, max_length=64, description="who makes the change (kept in the audit log)")
UPLOAD_FIRST = "upload the image first (POST /v1/products/images)"


class PromotionIn(Promotion):
    """A promotion as the API reads it: JSON types as the document states them (a number is
    not a date-time, `"5"` is not a number); otherwise `Promotion`."""

    value: Annotated[float, Field(allow_inf_nan=False), JSON_NUMBER] | None = None
    starts_at: UtcDateTime
    ends_at: UtcDateTime | None = None


class ProductIn(Product):
    """A product as the API reads it (see `PromotionIn`); `updated_at` is the catalogue's own
    and is ignored."""

    price: Annotated[float, Field(ge=0, allow_inf_nan=False), JSON_NUMBER] = Field(
        description="list price")
    # What the API reads; the catalogue gets `Promotion`s (`plain`).
    promotions: list[PromotionIn] = Field(default_factory=list)  # type: ignore[assignment]
    updated_at: UtcDateTime | None = Field(default=None, description="ignored: set by the core")


class ProductChange(BaseModel):
    """A partial update: only the fields given change (`image_key: null` removes the image)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    coarse: str | None = Field(default=None, max_length=200)
    price: Annotated[float, Field(ge=0, allow_inf_nan=False), JSON_NUMBER] | None = None
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


def plain(product: Product) -> Product:
    """The catalogue's own type (what was read as a `ProductIn`)."""
    return Product.model_validate(product.model_dump())


def check_images(store: ObjectStore, keys: list[str | None]) -> None:
    """Refuse (422) image keys that are not catalogue images already in the store."""
    for key in keys:
        if key is not None and not re.fullmatch(IMAGE_KEY_PATTERN, key):
            raise InvalidProduct(f"image_key {key[:80]!r} is not a catalogue image key; "
                                 f"{UPLOAD_FIRST}")
        if key is not None and not store.exists(key):
            raise InvalidProduct(f"image_key {key!r} is not in the object store; {UPLOAD_FIRST}")


async def image_body(request: Request) -> bytes:
    """The raw body, refused (413) as soon as it is known to pass MAX_IMAGE_BYTES."""
    too_large = TooLarge(f"a catalogue image is at most {MAX_IMAGE_BYTES} bytes")
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_IMAGE_BYTES:
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_IMAGE_BYTES:
            raise too_large
    return bytes(data)


def stored_image(store: ObjectStore, data: bytes) -> StoredImage:
    key, created = store_image(store, data)
    return StoredImage(key=key, sha256=key.rsplit("/", 1)[-1].split(".")[0],
                       media_type=image_media_type(key), created=created)


# --- products --------------------------------------------------------------------------------

@router.get("")
def list_products(services: Services, status: ProductStatus | None = None) -> list[Product]:
    return services.catalogue.list(status)


@router.post("", status_code=201, responses=errors(409, 422))
def add_product(product: ProductIn, services: Services, by: str | None = By) -> Product:
    check_images(services.store, [product.image_key])
    return services.catalogue.add(plain(product), by=by)


@router.put("", responses=errors(422))
def upsert_products(products: list[ProductIn], services: Services,
                    by: str | None = By) -> dict[str, int]:
    """Bulk insert-or-replace of whole records (promotions included)."""
    check_images(services.store, [p.image_key for p in products])
    return {"upserted": services.catalogue.upsert([plain(p) for p in products], by=by)}


@router.post("/import", responses=errors(422))
def import_products(req: ImportRequest, services: Services, by: str | None = By) -> ImportReport:
    """Merge imported records: new SKUs are added; for known ones only name, coarse
    class, description and image are updated (prices, status, promotions stay)."""
    check_images(services.store, [p.image_key for p in req.products])
    return services.catalogue.import_products([plain(p) for p in req.products], by=by,
                                              source=req.source)


@router.post("/images", response_model=StoredImage, responses={
    200: {"description": "Already stored", "model": StoredImage},
    201: {"description": "Stored", "model": StoredImage}, **errors(413, 422)},
    openapi_extra=binary_body(*IMAGE_TYPES, description="the image (JPEG, PNG or WebP)"))
async def upload_image(request: Request, services: Services) -> JSONResponse:
    """A catalogue image (JPEG, PNG, WebP) as the raw body, stored under its sha256."""
    data = await image_body(request)
    stored = await run_in_threadpool(stored_image, services.store, data)
    return JSONResponse(stored.model_dump(), status_code=201 if stored.created else 200)


@router.get("/{sku}", responses=errors(404))
def get_product(sku: str, services: Services) -> Product:
    return services.catalogue.require(sku)


@router.patch("/{sku}", responses=errors(404, 422))
def change_product(sku: str, change: ProductChange, services: Services,
                   by: str | None = By) -> Product:
    fields = change.model_dump(exclude_unset=True)
    if "promotions" in fields:
        fields["promotions"] = [Promotion.model_validate(p.model_dump())
                                for p in change.promotions or []]
    if "image_key" in fields:
        check_images(services.store, [fields["image_key"]])
    return services.catalogue.change(sku, by=by, **fields)


@router.post("/{sku}/retire", responses=errors(404, 422))
def retire_product(sku: str, retirement: Retirement, services: Services,
                   by: str | None = By) -> Product:
    return services.catalogue.retire(sku, retirement.reason, by=by)


@router.post("/{sku}/promotions", responses=errors(404, 422))
def promote_product(sku: str, promotion: PromotionIn, services: Services,
                    by: str | None = By) -> Product:
    """Add a promotion, or replace the product's promotion with the same id."""
    return services.catalogue.promote(sku, Promotion.model_validate(promotion.model_dump()),
                                      by=by)


@router.delete("/{sku}/promotions/{promotion_id}", responses=errors(404))
def withdraw_promotion(sku: str, promotion_id: str, services: Services,
                       by: str | None = By) -> Product:
    return services.catalogue.withdraw_promotion(sku, promotion_id, by=by)


# --- a product's image -----------------------------------------------------------------------

@router.put("/{sku}/image", responses=errors(404, 413, 422),
            openapi_extra=binary_body(*IMAGE_TYPES, description="the image"))
async def put_product_image(sku: str, request: Request, services: Services,
                            by: str | None = By) -> Product:
    """Set a product's catalogue image from the raw body (JPEG, PNG, WebP)."""
    data = await image_body(request)

    def store_and_set() -> Product:
        services.catalogue.require(sku)
        key, _created = store_image(services.store, data)
        return services.catalogue.change(sku, by=by, image_key=key)

    return await run_in_threadpool(store_and_set)


@router.get("/{sku}/image", response_class=Response, responses={
    200: {"description": "The catalogue image", "content": {m: BINARY for m in IMAGE_TYPES}},
    **errors(404)})
def product_image(sku: str, services: Services) -> Response:
    product = services.catalogue.require(sku)
    if product.image_key is None:
        raise NotFound(f"{sku} has no catalogue image")
    try:
        data = services.store.get(product.image_key)
    except ObjectNotFound as exc:
        raise NotFound(f"the image of {sku} is gone") from exc
    etag = product.image_key.rsplit("/", 1)[-1].split(".")[0]
    return Response(data, media_type=image_media_type(product.image_key),
                    headers={"ETag": f'"{etag}"', "Cache-Control": "max-age=300"})
