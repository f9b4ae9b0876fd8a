"""The product catalogue: what a SKU is called, what it costs, whether it is sold.

Every committed change (add, change, retire, promotions, bulk upsert, import) is

- recorded in the audit log in the same transaction (`catalogue.added`, `catalogue.changed`
  with a field diff `{field: [old, new]}`, `catalogue.retired` with the reason), and
- handed, after the commit, to the `on_change` hook as the changed products' full records,
  so it can be replicated to edge sites. The hook runs in the caller's thread (a worker
  thread under the HTTP API); an exception in it is logged, never raised: the change is
  already committed. A write that changes nothing calls no hook and records nothing.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.errors import Conflict, Invalid, NotFound
from edge2core.common.events import as_utc, utcnow
from edge2core.common.images import ImageRejected, sha256_hex, sniff_format
from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.common.products import Product, ProductStatus, Promotion, stored_product
from edge2core.core.audit import AuditLog
from edge2core.core.db.schema import ProductRow

log = get_logger(__name__)

OnChange = Callable[[list[Product]], None]

# Fields `change` may set; the SKU is the identity and `updated_at` is the catalogue's own.
CHANGEABLE = frozenset({"name", "coarse", "price", "currency", "status", "description",
                        "promotions", "image_key"})
# Fields an import takes from the dataset; price, status and promotions stay the store's.
IMPORTED = ("name", "coarse", "description", "image_key")
IMAGE_PREFIX = "catalogue/images/"
# What `image_key_for` makes: the only keys a product's image may name.
IMAGE_KEY_PATTERN = r"^catalogue/images/[0-9a-f]{2}/[0-9a-f]{64}\.(jpg|png|webp|heic|avif)$"
# Every format the one decoding path reads (`images.SUPPORTED_FORMATS`): kept as sent, decoded
# to sRGB wherever pixels are needed.
IMAGE_TYPES = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"),
               "WEBP": ("webp", "image/webp"), "HEIF": ("heic", "image/heic"),
               "AVIF": ("avif", "image/avif")}
MAX_IMAGE_BYTES = 16 * 1024 * 1024


class UnknownProduct(NotFound):
    """No product has this SKU (HTTP 404)."""


class DuplicateProduct(Conflict):
    code = "duplicate"
    """A product with this SKU exists already (HTTP 409)."""


class InvalidProduct(Invalid):
    """The record or change is not valid (HTTP 422)."""


class ImportReport(BaseModel):
    added: list[str] = []
    changed: list[str] = []
    unchanged: int = 0
    images_stored: int = 0
    missing_images: list[str] = []


def image_key_for(data: bytes) -> tuple[str, str]:
    """The content-addressed key of a catalogue image, and its media type."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidProduct(f"a catalogue image is at most {MAX_IMAGE_BYTES} bytes")
    try:
        ext, media_type = IMAGE_TYPES[sniff_format(data)]
    except ImageRejected as exc:
        raise InvalidProduct(f"not a catalogue image: {exc.detail}") from exc
    digest = sha256_hex(data)
    return f"{IMAGE_PREFIX}{digest[:2]}/{digest}.{ext}", media_type


def store_image(store: ObjectStore, data: bytes) -> tuple[str, bool]:
    """Put a catalogue image under its content-addressed key; (key, newly stored)."""
    key, _media_type = image_key_for(data)
    if store.exists(key):
        return key, False
    store.put(key, data)
    return key, True


def image_media_type(key: str) -> str:
    ext = key.rsplit(".", 1)[-1]
    return next((m for e, m in IMAGE_TYPES.values() if e == ext), "application/octet-stream")



def _product(row: ProductRow) -> Product:
    fields: dict[str, Any] = dict(
        sku=row.sku,
        name=row.name,
        coarse=row.coarse,
        price=row.price,
        currency=row.currency,
        status=ProductStatus(row.status),
        description=row.description,
        promotions=[Promotion.model_validate(p) for p in row.promotions or []],
        image_key=row.image_key,
        updated_at=as_utc(row.updated_at),
    )
    try:
        return Product(**fields)
    except ValidationError as exc:
        # Written before today's rules: still readable and sellable (see stored_product).
        log.warning("catalogue row does not meet the current rules; served as stored",
                    sku=row.sku, error=_message(row.sku, exc))
        return stored_product(fields)


def _diff(old: Product, new: Product) -> dict[str, list[Any]]:
    before, after = old.content(), new.content()
    return {k: [before[k], after[k]] for k in after if before.get(k) != after[k]}


def _write(row: ProductRow, product: Product, now: datetime) -> None:
    values = product.content()
    for key in ("name", "coarse", "price", "currency", "status", "description", "promotions",
                "image_key"):
        setattr(row, key, values[key])
    row.updated_at = now


class Catalogue:
    def __init__(self, sessions: sessionmaker[Session], on_change: OnChange | None = None) -> None:
        self.publishing = threading.Lock()
        self._sessions = sessions
        self.on_change = on_change
        self.audit = AuditLog(sessions)

    # --- reads ---------------------------------------------------------------------------

    def list(self, status: ProductStatus | None = None) -> list[Product]:
        stmt = select(ProductRow).order_by(ProductRow.sku)
        if status is not None:
            stmt = stmt.where(ProductRow.status == status.value)
        with self._sessions() as session:
            rows = session.scalars(stmt).all()
        return [_product(r) for r in rows]

    def get(self, sku: str) -> Product | None:
        with self._sessions() as session:
            row = session.get(ProductRow, sku)
        return _product(row) if row else None

    def require(self, sku: str) -> Product:
        product = self.get(sku)
        if product is None:
            raise UnknownProduct(f"no product {sku!r} in the catalogue")
        return product

    # --- writes --------------------------------------------------------------------------

    def add(self, product: Product, *, by: str | None = None) -> Product:
        """A new product; DuplicateProduct if the SKU exists (whatever its status)."""
        try:
            with self._sessions.begin() as session:
                if session.get(ProductRow, product.sku) is not None:
                    raise DuplicateProduct(f"{product.sku} is already in the catalogue; "
                                           "change it instead")
                saved = self._insert(session, product, by=by)
        except IntegrityError as exc:  # a concurrent add of the same SKU won
            raise DuplicateProduct(f"{product.sku} is already in the catalogue") from exc
        self._notify([saved])
        return saved

    def change(self, sku: str, /, *, by: str | None = None, **fields: Any) -> Product:
        """A partial update of the given fields; unknown SKU: UnknownProduct."""
        unknown = set(fields) - CHANGEABLE
        if unknown:
            raise InvalidProduct(f"cannot change {sorted(unknown)}; changeable fields are "
                                 f"{sorted(CHANGEABLE)}")
        return self._update(sku, lambda old: fields, by=by)

    def retire(self, sku: str, reason: str, *, by: str | None = None) -> Product:
        """No longer sold: the edge stops answering it at once. Retiring again is a no-op."""
        return self._update(sku, lambda old: {"status": ProductStatus.RETIRED}, by=by,
                            reason=reason)

    def promote(self, sku: str, promotion: Promotion, *, by: str | None = None) -> Product:
        """Add a promotion, or replace the one with the same id."""
        def promotions(old: Product) -> dict[str, Any]:
            kept = [p for p in old.promotions if p.id != promotion.id]
            return {"promotions": [*kept, promotion]}

        return self._update(sku, promotions, by=by)

    def withdraw_promotion(self, sku: str, promotion_id: str, *, by: str | None = None) -> Product:
        def promotions(old: Product) -> dict[str, Any]:
            if all(p.id != promotion_id for p in old.promotions):
                raise UnknownProduct(f"{sku} has no promotion {promotion_id!r}")
            return {"promotions": [p for p in old.promotions if p.id != promotion_id]}

        return self._update(sku, promotions, by=by)

    def upsert(self, products: Iterable[Product], *, by: str | None = None) -> int:
        """Insert or fully replace each record (bulk PUT); returns how many were given."""
        products = list(products)
        changed: list[Product] = []
        with self._sessions.begin() as session:
            for product in products:
                row = session.get(ProductRow, product.sku, with_for_update=True)
                if row is None:
                    changed.append(self._insert(session, product, by=by))
                elif (saved := self._replace(session, row, product, by=by)) is not None:
                    changed.append(saved)
        self._notify(changed)
        return len(products)

    def import_products(self, products: Iterable[Product], *, by: str | None = None,
                        source: str = "") -> ImportReport:
        """Merge imported records: new SKUs are added as given; for existing ones only the
        dataset's fields (name, coarse class, description, image) are updated, so prices,
        status and promotions set by people survive a re-import. Idempotent."""
        report = ImportReport()
        changed: list[Product] = []
        with self._sessions.begin() as session:
            for product in products:
                row = session.get(ProductRow, product.sku, with_for_update=True)
                if row is None:
                    changed.append(self._insert(session, product, by=by, source=source))
                    report.added.append(product.sku)
                    continue
                old = _product(row)
                merged = old.model_copy(update={k: getattr(product, k) for k in IMPORTED
                                                if k != "image_key" or product.image_key})
                saved = self._replace(session, row, merged, by=by, source=source)
                if saved is None:
                    report.unchanged += 1
                else:
                    changed.append(saved)
                    report.changed.append(product.sku)
        self._notify(changed)
        return report

    # --- internals -----------------------------------------------------------------------

    def _insert(self, session: Session, product: Product, *, by: str | None,
                source: str = "") -> Product:
        now = utcnow()
        row = ProductRow(sku=product.sku, created_at=now)
        _write(row, product, now)
        session.add(row)
        session.flush()
        detail: dict[str, Any] = {"by": by, "product": product.content()}
        if source:
            detail["source"] = source
        self.audit.record_in(session, "catalogue.added", product.sku, **detail)
        return product.model_copy(update={"updated_at": now})

    def _replace(self, session: Session, row: ProductRow, new: Product, *, by: str | None,
                 reason: str | None = None, source: str = "") -> Product | None:
        old = _product(row)
        diff = _diff(old, new)
        if not diff:
            return None
        now = utcnow()
        _write(row, new, now)
        retired = new.status is ProductStatus.RETIRED and old.status is not ProductStatus.RETIRED
        detail: dict[str, Any] = {"by": by, "changes": diff}
        if reason is not None:
            detail["reason"] = reason
        if source:
            detail["source"] = source
        kind = "catalogue.retired" if retired else "catalogue.changed"
        self.audit.record_in(session, kind, new.sku, **detail)
        return new.model_copy(update={"updated_at": now})

    def _update(self, sku: str, fields_of: Callable[[Product], dict[str, Any]], *,
                by: str | None, reason: str | None = None) -> Product:
        with self._sessions.begin() as session:
            row = session.get(ProductRow, sku, with_for_update=True)
            if row is None:
                raise UnknownProduct(f"no product {sku!r} in the catalogue")
            old = _product(row)
            values = {**old.model_dump(), **fields_of(old), "updated_at": None}
            try:
                new = Product.model_validate(values)
            except ValidationError as exc:
                raise InvalidProduct(_message(sku, exc)) from exc
            saved = self._replace(session, row, new, by=by, reason=reason)
        if saved is None:
            return old
        self._notify([saved])
        return saved

    def _notify(self, products: builtins.list[Product]) -> None:
        """Hand the changed products' latest committed records to the hook, one change at a
        time: two writers racing cannot publish an older record after a newer one."""
        if not products or self.on_change is None:
            return
        try:
            with self.publishing:
                latest = [p for p in (self.get(q.sku) for q in products) if p is not None]
                self.on_change(latest)
        except Exception:  # the change is committed; replication must reconcile
            log.exception("catalogue on_change hook failed",
                          skus=[p.sku for p in products][:20])


def _message(sku: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "product"
        parts.append(f"{where}: {error['msg']}")
    return f"{sku}: " + "; ".join(parts)
