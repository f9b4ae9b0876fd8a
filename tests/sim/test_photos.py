"""Photo sources: the real grocery dataset, the synthetic catalogue, and how the demo picks one."""

from __future__ import annotations

import colorsys
import io
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge2core.sim import synthetic
from edge2core.sim.photos import (
    GroceryDataset,
    PhotoSource,
    Product,
    SyntheticCatalogue,
    choose_products,
    product_price,
    resolve_source,
)
from tests.support.paths import GROCERY as DATASET


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _colour_histogram(data: bytes, bins: int = 24) -> np.ndarray:
    """Normalised hue histogram weighted by saturation and brightness.

    A crude, model-free proxy for "looks different": synthetic backgrounds are muted on
    purpose, so the product's colours dominate the saturated pixels.
    """
    hsv = np.asarray(_decode(data).convert("HSV"), np.float64) / 256
    weights = (hsv[..., 1] * hsv[..., 2]) ** 2
    hist = np.bincount((hsv[..., 0] * bins).astype(int).ravel(), weights=weights.ravel(), minlength=bins)
    return hist / hist.sum()


@pytest.fixture(scope="module")
def grocery() -> GroceryDataset:
    if not (DATASET / "classes.csv").is_file():
        pytest.skip(f"grocery dataset not found at {DATASET} (set E2C_DATASET to run these tests)")
    return GroceryDataset(DATASET)


# --- real dataset -------------------------------------------------------------------------


def test_grocery_reads_products_and_real_jpeg_photos(grocery: GroceryDataset) -> None:
    products = grocery.products()
    assert len(products) == 81
    assert [p.class_id for p in products] == list(range(81))
    first = products[0]
    assert first.sku == "SKU-0000" and first.name == "Golden-Delicious" and first.coarse_name == "Apple"
    assert "Golden Delicious" in first.description

    photos = grocery.photos("train", first, 3)
    assert len(photos) == 3 and len({p.name for p in photos}) == 3
    for photo in photos:
        assert photo.product == first
        assert photo.data[:2] == b"\xff\xd8"  # JPEG magic, bytes exactly as on disk
        assert photo.data == next(DATASET.glob(f"train/**/{photo.name}")).read_bytes()
        assert _decode(photo.data).size == (348, 348)


def test_grocery_val_split_and_limits(grocery: GroceryDataset) -> None:
    product = grocery.products()[6]
    assert 0 < len(grocery.photos("val", product, 1000)) < len(grocery.photos("train", product, 1000))
    assert grocery.photos("val", product, 0) == []


def test_grocery_refuses_test_split(grocery: GroceryDataset) -> None:
    with pytest.raises(ValueError, match="test split is kept aside"):
        grocery.photos("test", grocery.products()[0], 1)


def test_grocery_wrong_layout_names_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as info:
        GroceryDataset(tmp_path)
    assert "classes.csv" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GroceryDataset(tmp_path / "missing")


# --- products and prices ------------------------------------------------------------------


def test_prices_are_deterministic_and_plausible() -> None:
    names = [f"Product {i}" for i in range(300)]
    prices = [product_price(n) for n in names]
    assert prices == [product_price(n) for n in names]
    assert all(0.49 <= p <= 6.99 and round(p * 100) % 10 == 9 for p in prices)
    assert len(set(prices)) > 30  # spread out, not one constant
    a = Product.create("Oat Milk", 7, "Milk", 2)
    assert a == Product.create("Oat Milk", 7, "Milk", 2)
    assert (a.sku, a.currency, a.description) == ("SKU-0007", "EUR", "")


# --- synthetic photos ---------------------------------------------------------------------


def test_synthetic_photos_are_deterministic_jpegs() -> None:
    data = synthetic.render_photo(3, 5, seed=1)
    assert data == synthetic.render_photo(3, 5, seed=1)
    img = _decode(data)
    assert img.format == "JPEG" and img.size == (348, 348)
    assert data != synthetic.render_photo(3, 6, seed=1)
    assert data != synthetic.render_photo(3, 5, seed=2)
    assert _decode(synthetic.render_photo(0, 0, size=224)).size == (224, 224)


def test_synthetic_photos_of_one_product_vary() -> None:
    photos = [np.asarray(_decode(synthetic.render_photo(2, i)), np.float32) for i in range(4)]
    for a, b in itertools.combinations(photos, 2):
        assert np.abs(a - b).mean() > 10  # new background, pose and lighting every time


def test_synthetic_products_differ_more_than_photos_of_one_product() -> None:
    n_products, n_photos = 8, 6
    hists = np.array(
        [
            [_colour_histogram(synthetic.render_photo(p, i)) for i in range(n_photos)]
            for p in range(n_products)
        ]
    )
    within = [
        np.abs(hists[p, i] - hists[p, j]).sum()
        for p in range(n_products)
        for i, j in itertools.combinations(range(n_photos), 2)
    ]
    across = [
        np.abs(hists[p, i] - hists[q, j]).sum()
        for p, q in itertools.combinations(range(n_products), 2)
        for i in range(n_photos)
        for j in range(n_photos)
    ]
    assert np.mean(across) > 1.6 * np.mean(within)
    # Leave-one-out nearest centroid on colour alone already tells nearly all products apart.
    correct = 0
    for p in range(n_products):
        for i in range(n_photos):
            centroids = [
                np.delete(hists[q], i, axis=0).mean(axis=0) if q == p else hists[q].mean(axis=0)
                for q in range(n_products)
            ]
            guess = int(np.argmin([np.abs(hists[p, i] - c).sum() for c in centroids]))
            correct += guess == p
    assert correct / (n_products * n_photos) > 0.9


def test_synthetic_styles_are_distinct() -> None:
    styles = [synthetic.product_style(i) for i in range(80)]
    assert len({s.brand for s in styles}) == 80
    assert [s.category_id for s in styles[:8]] == list(range(8))  # first 8: distinct coarse classes
    # Products sharing shape and pattern keep clearly different hues.
    for a, b in itertools.combinations(styles, 2):
        if (a.shape, a.pattern) == (b.shape, b.pattern):
            ha, hb = (colorsys.rgb_to_hsv(*(c / 255 for c in s.main_rgb))[0] for s in (a, b))
            assert min(abs(ha - hb), 1 - abs(ha - hb)) > 0.12, (a, b)


def test_synthetic_rendering_is_fast() -> None:
    for p in range(4):
        synthetic.render_photo(p, 0)  # sprites are drawn once per product and cached
    start = time.perf_counter()
    for i in range(40):
        synthetic.render_photo(i % 4, 100 + i)
    per_photo = (time.perf_counter() - start) / 40
    assert per_photo < 0.05, f"{per_photo * 1000:.1f} ms per photo"  # target 20 ms, slack for CI


def test_synthetic_catalogue_splits() -> None:
    source = SyntheticCatalogue(5, seed=3)
    assert isinstance(source, PhotoSource)
    products = source.products()
    assert [p.class_id for p in products] == list(range(5))
    assert products == SyntheticCatalogue(5, seed=3).products()
    assert all(p.description and p.price > 0 for p in products)
    train = source.photos("train", products[1], 3)
    val = source.photos("val", products[1], 3)
    assert len(train) == 3 and {p.product for p in train} == {products[1]}
    assert not {p.data for p in train} & {p.data for p in val}
    assert [p.data for p in train] == [p.data for p in source.photos("train", products[1], 3)]
    with pytest.raises(ValueError, match="test"):
        source.photos("test", products[0], 1)


# --- choosing a source and products -------------------------------------------------------


def test_resolve_source_falls_back_to_synthetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("E2C_DATASET", raising=False)
    workdir = tmp_path / "main"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # no ../shared/datasets/grocery beside it
    source = resolve_source(None, classes=6, seed=2)
    assert isinstance(source, SyntheticCatalogue)
    assert len(source.products()) == 6


def test_resolve_source_finds_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, grocery: GroceryDataset
) -> None:
    monkeypatch.delenv("E2C_DATASET", raising=False)
    assert isinstance(resolve_source(DATASET, classes=6, seed=0), GroceryDataset)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E2C_DATASET", str(DATASET))
    assert isinstance(resolve_source(None, classes=6, seed=0), GroceryDataset)
    # The default place: <cwd>/../shared/datasets/grocery.
    monkeypatch.delenv("E2C_DATASET")
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    (tmp_path / "shared" / "datasets" / "grocery").symlink_to(DATASET)
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    source = resolve_source(None, classes=6, seed=0)
    assert isinstance(source, GroceryDataset) and len(source.products()) == 81


def test_resolve_source_rejects_an_explicit_missing_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A mistyped --dataset / E2C_DATASET must not silently turn into synthetic photos.
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_source(tmp_path / "missing", classes=6, seed=0)
    monkeypatch.setenv("E2C_DATASET", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_source(None, classes=6, seed=0)


def _coarse_catalogue() -> SyntheticCatalogue:
    return SyntheticCatalogue(24, seed=0)  # 8 coarse classes, 3 products each


def test_choose_products_is_deterministic_and_spread() -> None:
    source = _coarse_catalogue()
    coarse_count = len({p.coarse_id for p in source.products()})
    chosen = choose_products(source, coarse_count, seed=5)
    assert chosen == choose_products(source, coarse_count, seed=5)
    assert len({p.coarse_id for p in chosen}) == coarse_count  # one per coarse class
    more = choose_products(source, coarse_count + 3, seed=5)
    counts = np.bincount([p.coarse_id for p in more])
    assert counts.max() == 2 and len(counts.nonzero()[0]) == coarse_count
    assert {p.class_id for p in choose_products(source, 24, seed=1)} == set(range(24))
    assert any(choose_products(source, 4, seed=s) != chosen[:4] for s in range(6))
    with pytest.raises(ValueError):
        choose_products(source, 25, seed=0)


def test_choose_products_on_real_dataset(grocery: GroceryDataset) -> None:
    chosen = choose_products(grocery, 20, seed=0)
    assert chosen == choose_products(grocery, 20, seed=0)
    assert len({p.coarse_id for p in chosen}) == 20
