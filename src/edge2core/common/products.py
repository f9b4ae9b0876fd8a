"""Product records as the catalogue keeps them and the edge replicates them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class ProductStatus(StrEnum):
    PENDING_DATA = "pending-data"
    ACTIVE = "active"
    RETIRED = "retired"


class Product(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    coarse: str = ""
    price: float = Field(ge=0)
    currency: str = Field(default="EUR", min_length=3, max_length=3)
    status: ProductStatus = ProductStatus.ACTIVE
    description: str = ""
