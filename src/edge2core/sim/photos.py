"""Where the demo's product photos come from: the real grocery dataset or a synthetic catalogue.

Both sources offer the same small interface (`PhotoSource`): a product list and labelled
photos per split. Only the "train" and "val" splits exist here: the dataset's official test
split is kept aside to measure recognition accuracy independently, so it is refused outright.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

from edge2core.core.catalogue.grocery import grocery_price, grocery_sku
from edge2core.sim import synthetic

# The catalogue's rule for the dataset's missing prices, under the name the demo gave it.
product_price = grocery_price

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val")
DATASET_ENV = "E2C_DATASET"
CURRENCY = "EUR"

# Synthetic validation photos use photo indices far from the training ones, so the two
# splits never share an image.
_SYNTHETIC_VAL_OFFSET = 1_000_000


@dataclass(frozen=True)
class Product:
    """A product the kiosks can sell and the model should recognise."""

    sku: str
    name: str
    class_id: int
    coarse_name: str
    coarse_id: int
    description: str
    price: float
    currency: str

    @classmethod
    def create(
        cls, name: str, class_id: int, coarse_name: str, coarse_id: int, description: str = ""
    ) -> Product:
        """A product with its SKU and price derived from its class id and name."""
        return cls(
            sku=grocery_sku(class_id),
            name=name,
            class_id=class_id,
            coarse_name=coarse_name,
            coarse_id=coarse_id,
            description=description,
            price=product_price(name),
            currency=CURRENCY,
        )


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo of a known product, as the bytes a kiosk would upload."""

    product: Product
    data: bytes
    name: str


@runtime_checkable
class PhotoSource(Protocol):
    def products(self) -> list[Product]:
        """All products of the source, ordered by class id."""
        ...

    def photos(self, split: str, product: Product, limit: int) -> list[LabelledPhoto]:
        """Up to `limit` photos of `product` from `split` ("train" or "val")."""
        ...


def _check_request(split: str, limit: int) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r}: expected one of {SPLITS}"
            + (" (the test split is kept aside for independent evaluation)" if split == "test" else "")
        )
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _spread(items: list[str], limit: int) -> list[str]:
    """`limit` items evenly spaced over `items`.

    Photo files are numbered in shooting order, so consecutive ones are near-duplicates;
    spacing the picks out gives a small sample more variety than taking the first few.
    """
    if limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


class GroceryDataset(PhotoSource):
    """Photos from a folder in the grocery dataset's layout (see its README.md).

    Reading is lazy: the class list and split indexes are parsed on first use, and photo
    files are read only when asked for.
    """

    _REQUIRED = ("classes.csv", "train.txt", "val.txt")

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._indexes: dict[str, dict[int, list[str]]] = {}
        missing = [f for f in self._REQUIRED if not (self.root / f).is_file()]
        if missing:
            what = "does not exist" if not self.root.is_dir() else f"lacks {', '.join(missing)}"
            raise FileNotFoundError(
                f"{self.root} {what}: expected a grocery-layout dataset folder with "
                "classes.csv, train.txt, val.txt and the train/ and val/ photo folders"
            )

    def __repr__(self) -> str:
        return f"GroceryDataset({str(self.root)!r})"

    def _path(self, relative: str) -> Path:
        # classes.csv paths start with '/' but are relative to the dataset root.
        return self.root / relative.strip().lstrip("/")

    @cached_property
    def _products(self) -> list[Product]:
        with (self.root / "classes.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        products = []
        for row in rows:
            desc_path = self._path(row["Product Description Path (str)"])
            description = desc_path.read_text(encoding="utf-8").strip() if desc_path.is_file() else ""
            products.append(
                Product.create(
                    name=row["Class Name (str)"],
                    class_id=int(row["Class ID (int)"]),
                    coarse_name=row["Coarse Class Name (str)"],
                    coarse_id=int(row["Coarse Class ID (int)"]),
                    description=description,
                )
            )
        return sorted(products, key=lambda p: p.class_id)

    def _index(self, split: str) -> dict[int, list[str]]:
        """class id -> photo paths (relative to the root) listed in `<split>.txt`."""
        if split not in self._indexes:
            by_class: dict[int, list[str]] = defaultdict(list)
            for line in (self.root / f"{split}.txt").read_text(encoding="utf-8").splitlines():
                if line.strip():
                    path, fine_id, _coarse_id = (part.strip() for part in line.split(","))
                    by_class[int(fine_id)].append(path)
            self._indexes[split] = dict(by_class)
        return self._indexes[split]

    def products(self) -> list[Product]:
        return list(self._products)

    def photos(self, split: str, product: Product, limit: int) -> list[LabelledPhoto]:
        _check_request(split, limit)
        paths = _spread(self._index(split).get(product.class_id, []), limit)
        return [LabelledPhoto(product, self._path(p).read_bytes(), Path(p).name) for p in paths]


class SyntheticCatalogue(PhotoSource):
    """`classes` procedurally generated products (see `edge2core.sim.synthetic`)."""

    def __init__(self, classes: int, *, seed: int = 0) -> None:
        if classes < 1:
            raise ValueError(f"a synthetic catalogue needs at least 1 product, got {classes}")
        self.classes = classes
        self.seed = seed

    def __repr__(self) -> str:
        return f"SyntheticCatalogue(classes={self.classes}, seed={self.seed})"

    @cached_property
    def _products(self) -> list[Product]:
        products = []
        for i in range(self.classes):
            style = synthetic.product_style(i, seed=self.seed)
            products.append(
                Product.create(style.name, i, style.category, style.category_id, style.describe())
            )
        return products

    def products(self) -> list[Product]:
        return list(self._products)

    def photos(self, split: str, product: Product, limit: int) -> list[LabelledPhoto]:
        _check_request(split, limit)
        if not 0 <= product.class_id < self.classes:
            return []
        first = _SYNTHETIC_VAL_OFFSET if split == "val" else 0
        return [
            LabelledPhoto(
                product,
                synthetic.render_photo(product.class_id, first + i, seed=self.seed),
                f"synthetic-{product.sku}-{split}-{i:04d}.jpg",
            )
            for i in range(limit)
        ]


def resolve_source(dataset: Path | None, *, classes: int, seed: int) -> PhotoSource:
    """The photo source for a demo run.

    Order: `dataset`, else env E2C_DATASET, else `<cwd>/../shared/datasets/grocery` if it
    exists, else a synthetic catalogue of `classes` products. A folder named explicitly (the
    argument or the env variable) must be valid: silently swapping a mistyped path for
    synthetic photos would make a demo's accuracy numbers meaningless.
    """
    if dataset is not None:
        return GroceryDataset(dataset)
    env = os.environ.get(DATASET_ENV, "").strip()
    if env:
        return GroceryDataset(Path(env))
    default = Path.cwd().parent / "shared" / "datasets" / "grocery"
    if (default / "classes.csv").is_file():
        return GroceryDataset(default)
    log.info("no grocery dataset found (checked %s); using %d synthetic products", default, classes)
    return SyntheticCatalogue(classes, seed=seed)


def choose_products(source: PhotoSource, n: int, seed: int) -> list[Product]:
    """`n` products spread across coarse classes, deterministic in `seed`, by class id.

    Products of one coarse class (five apple varieties, six milks) look alike, so a demo
    with few products takes at most one per coarse class while that is possible, then a
    second from each, and so on.
    """
    products = source.products()
    if not 0 <= n <= len(products):
        raise ValueError(f"cannot choose {n} products from {len(products)}")
    rng = random.Random(seed)
    groups: dict[int, list[Product]] = defaultdict(list)
    for p in products:
        groups[p.coarse_id].append(p)
    order = sorted(groups)
    rng.shuffle(order)
    for coarse_id in order:
        rng.shuffle(groups[coarse_id])
    chosen: list[Product] = []
    depth = 0
    while len(chosen) < n:
        chosen += [groups[c][depth] for c in order if depth < len(groups[c])][: n - len(chosen)]
        depth += 1
    return sorted(chosen, key=lambda p: p.class_id)
