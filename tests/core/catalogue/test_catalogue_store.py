"""The catalogue's store on SQLite and on PostgreSQL (the `sessions` fixture): upsert, update,
list and get."""

from __future__ import annotations

from edge2core.common.products import Product, ProductStatus
from edge2core.core.catalogue.catalogue import Catalogue


def test_catalogue_upsert_update_list_get(sessions) -> None:
    catalogue = Catalogue(sessions)
    assert catalogue.list() == []
    assert catalogue.get("SKU-B") is None
    milk = Product(sku="SKU-B", name="Milk", coarse="dairy", price=1.29)
    apple = Product(sku="SKU-A", name="Apple", price=0.5, currency="USD", description="Red")
    assert catalogue.upsert([milk, apple]) == 2
    assert catalogue.list() == [apple, milk]  # ordered by SKU, not by insertion
    assert catalogue.get("SKU-B") == milk

    cheaper = milk.model_copy(update={"price": 0.99, "status": ProductStatus.RETIRED})
    new = Product(sku="SKU-0", name="Bread", price=2.0, status=ProductStatus.PENDING_DATA)
    assert catalogue.upsert([cheaper, new]) == 2
    assert catalogue.get("SKU-B") == cheaper
    assert catalogue.get("SKU-A") == apple  # untouched
    assert [p.sku for p in catalogue.list()] == ["SKU-0", "SKU-A", "SKU-B"]
    assert catalogue.get("SKU-0").status is ProductStatus.PENDING_DATA
    assert catalogue.get("sku-b") is None


