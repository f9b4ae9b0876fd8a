"""Products from a folder laid out like the Grocery Store Dataset (`classes.csv`, descriptions,
iconic images): what `edge2core catalogue import` sends to the core.

The dataset has no prices: new SKUs get a deterministic one from the name (`grocery_price`,
the same rule the demo's photo sources use), unless the caller passes its own `price_of`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge2core.common.products import Product
from edge2core.core.catalogue.catalogue import InvalidProduct


@dataclass(frozen=True)
class GroceryEntry:
    """One product read from a grocery-layout folder, with its iconic image's path."""

    product: Product
    image_path: Path | None


def grocery_sku(class_id: int) -> str:
    """The SKU of a grocery class, as the demo and the photo sources name it."""
    return f"SKU-{class_id:04d}"


def grocery_price(name: str) -> float:
    """A plausible, deterministic shelf price (0.49-6.99, ending in 9) for a product name.

    Hashing the name (not Python's salted `hash`) keeps the price stable across processes and
    machines.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    tenths = int.from_bytes(digest[:4], "big") % 66  # 0.49, 0.59, ..., 6.99
    return round(0.49 + tenths / 10, 2)


def read_grocery(
    root: Path | str,
    *,
    class_ids: Collection[int] | None = None,
    price_of: Callable[[str], float] = grocery_price,
    currency: str = "EUR",
) -> list[GroceryEntry]:
    """Products from `<root>/classes.csv` (any folder laid out like the grocery dataset):
    SKU from the class id, name, coarse class, description text, iconic image path."""
    root = Path(root)
    csv_path = root / "classes.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: expected a grocery-layout folder "
                                "with classes.csv and iconic-images-and-descriptions/")

    def path_of(value: str | None) -> Path | None:
        value = (value or "").strip().lstrip("/")  # paths start with '/', relative to root
        return root / value if value else None

    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    entries = []
    for n, row in enumerate(rows, start=2):
        cols = {k.split(" (")[0].strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            class_id = int(cols["Class ID"])
            name = cols["Class Name"]
        except (KeyError, ValueError) as exc:
            raise InvalidProduct(f"{csv_path}:{n}: needs 'Class Name' and an integer "
                                 f"'Class ID' ({exc})") from exc
        if class_ids is not None and class_id not in class_ids:
            continue
        desc_path = path_of(cols.get("Product Description Path"))
        description = (desc_path.read_text(encoding="utf-8").strip()
                       if desc_path is not None and desc_path.is_file() else "")
        image = path_of(cols.get("Iconic Image Path"))
        try:
            product = Product(sku=grocery_sku(class_id), name=name,
                              coarse=cols.get("Coarse Class Name", ""),
                              price=price_of(name), currency=currency,
                              description=description[:4000])
        except ValidationError as exc:
            raise InvalidProduct(f"{csv_path}:{n}: {exc}") from exc
        entries.append(GroceryEntry(product, image if image is not None and image.is_file()
                                    else None))
    return sorted(entries, key=lambda e: e.product.sku)
