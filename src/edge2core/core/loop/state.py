"""What the learning loop reads from the database: kiosk captures per product, the newest
photo's age, photos since a time, and the products a run can train on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, as_utc, utcnow
from edge2core.common.products import Product, ProductStatus
from edge2core.core.db.schema import ImageRow
from edge2core.core.loop.decide import ProductData


def kiosk_counts(sessions: sessionmaker[Session], skus: Sequence[str]) -> dict[str, ProductData]:
    if not skus:
        return {}
    stmt = (select(ImageRow.sku, func.count(), func.count(distinct(ImageRow.device)))
            .where(ImageRow.sku.in_(list(skus)), ImageRow.source == Source.KIOSK.value)
            .group_by(ImageRow.sku))
    with sessions() as session:
        found = {sku: ProductData(n, d) for sku, n, d in session.execute(stmt)}
    return {sku: found.get(sku, ProductData(0, 0)) for sku in skus}


def newest_photo_age_s(sessions: sessionmaker[Session]) -> float:
    with sessions() as session:
        newest = session.scalar(select(func.max(ImageRow.stored_at)).where(ImageRow.sku.is_not(None)))
    newest = as_utc(newest)
    return (utcnow() - newest).total_seconds() if newest else float("inf")


def photos_since(sessions: sessionmaker[Session], since: datetime) -> int:
    stmt = select(func.count()).select_from(ImageRow).where(
        ImageRow.stored_at > since, ImageRow.sku.is_not(None))
    with sessions() as session:
        return int(session.scalar(stmt) or 0)


def trainable(products: Sequence[Product], counts: dict[str, ProductData], ready: Sequence[str],
               min_photos: int) -> list[str]:
    """Active products with enough photos, and the pending ones a run is for."""
    chosen = [p.sku for p in products if p.status == ProductStatus.ACTIVE
              or (p.sku in ready and p.status != ProductStatus.RETIRED)]
    return sorted(s for s in chosen if counts[s].photos >= min_photos)
