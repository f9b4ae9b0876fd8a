"""The edge's copy of the catalogue: answers need no round trip to the core, even offline."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edge2core.common.fsutil import write_atomic
from edge2core.common.products import Product, ProductStatus


class CatalogueReplica:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._products: dict[str, Product] = {}
        # Bumped on every change, so readers can cache what they derive from the catalogue.
        self.revision = 0
        if path.is_file():
            self._products = {
                p["sku"]: Product.model_validate(p) for p in json.loads(path.read_text())
            }

    def replace(self, products: list[Product]) -> None:
        """Swap in the core's full catalogue, then persist it for offline restarts: answers
        use the new prices and retirements even if the disk write fails (it is retried with
        the next change; the caller hears of the failure)."""
        with self._lock:
            self._products = {p.sku: p for p in products}
            self.revision += 1
        payload = json.dumps([p.model_dump(mode="json") for p in products]).encode()
        write_atomic(self._path, [payload])

    def get(self, sku: str) -> Product | None:
        return self._products.get(sku)

    def list(self) -> list[Product]:
        return sorted(self._products.values(), key=lambda p: p.sku)

    def is_sellable(self, sku: str) -> bool:
        product = self._products.get(sku)
        return product is None or product.status != ProductStatus.RETIRED

    def __len__(self) -> int:
        return len(self._products)
