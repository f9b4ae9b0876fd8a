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




def test_catalogue_images_may_be_what_phones_save() -> None:
    """HEIC and AVIF are read by the one decoding path, so the catalogue keeps them too
    (before: a KeyError, answered 500)."""
    import io
    import re

    from PIL import Image

    from edge2core.core.catalogue.catalogue import IMAGE_KEY_PATTERN, image_key_for, image_media_type

    for fmt, ext, media in (("HEIF", "heic", "image/heic"), ("AVIF", "avif", "image/avif")):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), (200, 100, 50)).save(out, format=fmt)
        key, media_type = image_key_for(out.getvalue())
        assert key.endswith(f".{ext}") and media_type == media
        assert re.fullmatch(IMAGE_KEY_PATTERN, key) and image_media_type(key) == media
