"""Product records as the catalogue keeps them and the edge replicates them.

Pure values and rules only (no I/O): a `Product` with its `Promotion`s, which promotion is
active at a given time (`active_promotion`) and the price a shopper pays then
(`effective_price`). The core's catalogue and the edge's answers both use these.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge2core.common.identifiers import SKU_PATTERN

# SKUs end up in URL paths, NATS subjects and KV keys: letters, digits, '-', '_', '.'.
PROMOTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ProductStatus(StrEnum):
    PENDING_DATA = "pending-data"
    ACTIVE = "active"
    RETIRED = "retired"


class PromotionKind(StrEnum):
    PERCENT_OFF = "percent_off"  # value: percent off the list price, 0 < value < 100
    PRICE_OVERRIDE = "price_override"  # value: the promotional unit price
    MULTI_BUY = "multi_buy"  # e.g. "3 for 2": described by `label`; no unit-price change


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class Promotion(BaseModel):
    """A promotion valid from `starts_at` (inclusive) to `ends_at` (exclusive; None: open)."""

    id: str = Field(pattern=PROMOTION_ID_PATTERN, description="unique within the product")
    label: str = Field(default="", max_length=200, description="what the shopper reads")
    kind: PromotionKind
    value: float | None = Field(default=None, allow_inf_nan=False)
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value) if value is not None else None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError(f"promotion {self.id!r}: ends_at must be after starts_at")
        if self.kind is PromotionKind.PERCENT_OFF:
            if self.value is None or not 0 < self.value < 100:
                raise ValueError(f"promotion {self.id!r}: percent_off needs 0 < value < 100")
        elif self.kind is PromotionKind.PRICE_OVERRIDE:
            if self.value is None or self.value < 0:
                raise ValueError(f"promotion {self.id!r}: price_override needs a value >= 0")
        elif self.kind is PromotionKind.MULTI_BUY:
            if not self.label.strip():
                raise ValueError(f"promotion {self.id!r}: multi_buy needs a label, e.g. '3 for 2'")
            if self.value is not None:
                raise ValueError(f"promotion {self.id!r}: multi_buy takes no value, only a label")
        return self

    def active_at(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)


class Product(BaseModel):
    sku: str = Field(min_length=1, max_length=64, pattern=SKU_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    coarse: str = Field(default="", max_length=200)
    price: float = Field(ge=0, allow_inf_nan=False, description="list price")
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    status: ProductStatus = ProductStatus.ACTIVE
    description: str = Field(default="", max_length=4000)
    promotions: list[Promotion] = Field(default_factory=list)
    image_key: str | None = Field(default=None, max_length=200,
                                  description="object key of the catalogue image (core)")
    updated_at: datetime | None = Field(default=None, description="set by the catalogue")

    @model_validator(mode="after")
    def _unique_promotions(self) -> Self:
        ids = [p.id for p in self.promotions]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{self.sku}: promotion ids must be unique, got {ids}")
        return self

    def __eq__(self, other: object) -> bool:
        # Two records of the same product are equal whatever their bookkeeping timestamp.
        if not isinstance(other, Product):
            return NotImplemented
        return self.content() == other.content()

    # Unhashable (mutable, like every BaseModel): defining __eq__ sets __hash__ to None.

    def content(self) -> dict[str, Any]:
        """The record without `updated_at`, as JSON values (for diffs and comparisons)."""
        return self.model_dump(mode="json", exclude={"updated_at"})


def stored_product(fields: dict[str, Any]) -> Product:
    """A product as the catalogue stored it: validated, or, for a record written under older,
    looser rules (a SKU with a space, currency "eur"), taken as it is, so it stays sellable
    until its next change (which must meet today's rules). Raises ValueError without a SKU,
    a name, a price or a valid status."""
    if not isinstance(fields, dict):
        raise TypeError(f"a product is a JSON object, not {type(fields).__name__}")
    try:
        return Product.model_validate(fields)
    except ValidationError:
        sku, name, price = fields.get("sku"), fields.get("name"), fields.get("price")
        if not (isinstance(sku, str) and sku and isinstance(name, str)
                and isinstance(price, int | float)):
            raise
        promotions = []
        for promo in fields.get("promotions") or []:
            try:
                promotions.append(Promotion.model_validate(promo))
            except ValidationError:
                continue  # an unreadable promotion is no promotion
        return Product.model_construct(**{
            **fields, "price": float(price), "promotions": promotions,
            "status": ProductStatus(fields.get("status", ProductStatus.ACTIVE))})


def read_products(items: list[Any]) -> list[Product]:
    """The catalogue as a site receives it (HTTP list or KV values): each product read with
    `stored_product`; one unreadable record is left out (logged), not the whole catalogue."""
    import logging

    out = []
    for item in items:
        try:
            out.append(stored_product(item if isinstance(item, dict) else json.loads(item)))
        except (ValueError, TypeError) as exc:
            logging.getLogger(__name__).warning("unreadable product left out: %s", exc)
    return out


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must carry a timezone")
    return _utc(now)


def _unit_price(price: float, promotion: Promotion | None) -> float:
    if promotion is None or promotion.kind is PromotionKind.MULTI_BUY:
        return price
    if promotion.kind is PromotionKind.PERCENT_OFF:
        assert promotion.value is not None
        discounted = Decimal(str(price)) * (Decimal(100) - Decimal(str(promotion.value))) / 100
        return float(discounted.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    assert promotion.value is not None
    return min(price, promotion.value)  # a promotion never raises the price


def active_promotion(product: Product, now: datetime | None = None) -> Promotion | None:
    """The promotion a shopper gets at `now` (UTC; default: the current time), or None.

    Retired products have none. Among overlapping promotions the one with the lowest unit
    price wins (a multi-buy only when no price promotion is active); ties go to the one that
    started last, then to the smaller id, so the choice is deterministic.
    """
    if product.status is ProductStatus.RETIRED:
        return None
    at = _now(now)
    live = [p for p in product.promotions if p.active_at(at)]
    if not live:
        return None
    return min(live, key=lambda p: (
        p.kind is PromotionKind.MULTI_BUY, _unit_price(product.price, p),
        -p.starts_at.timestamp(), p.id,
    ))


def effective_price(product: Product, now: datetime | None = None) -> float:
    """The unit price at `now`: the list price with the active promotion applied."""
    return _unit_price(product.price, active_promotion(product, now))


def priced(product: Product, now: datetime | None = None) -> tuple[Promotion | None, float]:
    """The active promotion and the effective price, both judged at the same instant."""
    promotion = active_promotion(product, now)
    return promotion, _unit_price(product.price, promotion)
