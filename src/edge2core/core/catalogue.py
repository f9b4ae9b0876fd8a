"""The product catalogue: what a SKU is called, what it costs, whether it is sold."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.products import Product, ProductStatus
from edge2core.core.schema import ProductRow


class Catalogue:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def upsert(self, products: list[Product]) -> int:
        with self._sessions.begin() as session:
            for product in products:
                session.merge(ProductRow(**product.model_dump(mode="json")))
        return len(products)

    def list(self) -> list[Product]:
        with self._sessions() as session:
            rows = session.scalars(select(ProductRow).order_by(ProductRow.sku)).all()
        return [_product(r) for r in rows]

    def get(self, sku: str) -> Product | None:
        with self._sessions() as session:
            row = session.get(ProductRow, sku)
        return _product(row) if row else None


def _product(row: ProductRow) -> Product:
    return Product(
        sku=row.sku,
        name=row.name,
        coarse=row.coarse,
        price=row.price,
        currency=row.currency,
        status=ProductStatus(row.status),
        description=row.description,
    )
