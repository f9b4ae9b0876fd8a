"""The catalogue routes from before `/v1/products`, kept for the edge's replica pull (a site
reads them with its own token) and older clients; they answer as the routes they stand for."""

from __future__ import annotations

from fastapi import APIRouter

from edge2core.common.products import Product
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors
from edge2core.core.api.routers.catalogue import ProductIn, get_product, upsert_products

router = APIRouter(prefix="/v1/catalogue/products", tags=["catalogue"], deprecated=True)


@router.get("")
def legacy_list(services: Services) -> list[Product]:
    return services.catalogue.list()


@router.put("", responses=errors(422))
def legacy_upsert(products: list[ProductIn], services: Services) -> dict[str, int]:
    return upsert_products(products, services, None)


@router.get("/{sku}", responses=errors(404))
def legacy_get(sku: str, services: Services) -> Product:
    return get_product(sku, services)
