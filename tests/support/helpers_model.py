"""A small real ONNX product classifier, built once per test session with the project's code.

Frozen EfficientNet-Lite0 backbone + a linear head trained on synthetic product photos
(`edge2core.sim.synthetic.render_photo`), exported as one ONNX file. Test modules import
`trained_model` (a session-scoped fixture); the build itself is cached in this module, so
several test modules importing the fixture still build the model only once per session.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from edge2core.common.products import Product
from edge2core.sim.synthetic import product_style, render_photo
from tests.support.grocery import sku

PRODUCTS = 3
TRAIN_PHOTOS = range(8)  # photo indices used for training
HELD_OUT_PHOTOS = range(100, 104)  # never seen in training


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    data: bytes
    sha256: str
    classes: tuple[str, ...]
    products: tuple[Product, ...]  # catalogue entries for the classes, in class order

    def held_out(self, product_index: int) -> list[bytes]:
        """Photos of a product the model never saw in training."""
        return [render_photo(product_index, i) for i in HELD_OUT_PHOTOS]


def catalogue_products() -> list[Product]:
    out = []
    for i in range(PRODUCTS):
        style = product_style(i)
        out.append(Product(sku=sku(i), name=style.name, coarse=style.category,
                           price=round(1.49 + i, 2), currency="EUR"))
    return out


def tweaked_copy(model: bytes, note: str) -> bytes:
    """The same network with different bytes (a metadata entry), so a new sha256."""
    import onnx

    proto = onnx.load_from_string(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "note", note
    return proto.SerializeToString()


def training_photos() -> tuple[list[Image.Image], list[int]]:
    images: list[Image.Image] = []
    labels: list[int] = []
    for p in range(PRODUCTS):
        for i in TRAIN_PHOTOS:
            with Image.open(io.BytesIO(render_photo(p, i))) as im:
                images.append(im.convert("RGB"))
            labels.append(p)
    return images, labels


_lock = threading.Lock()
_built: TrainedModel | None = None


def build_model(out_dir: Path) -> TrainedModel:
    global _built
    with _lock:
        if _built is not None:
            return _built
        import numpy as np

        from edge2core.core.train.backbone import load_backbone
        from edge2core.core.train.head import embed, train_head
        from edge2core.core.train.onnx_export import export_onnx

        images, labels = training_photos()
        backbone = load_backbone()
        classes = [sku(p) for p in range(PRODUCTS)]
        head = train_head(embed(backbone, images), np.array(labels, dtype=np.int64), classes, seed=0)
        path = out_dir / "model.onnx"
        export_onnx(backbone, head, path)
        data = path.read_bytes()
        _built = TrainedModel(
            path=path,
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            classes=tuple(classes),
            products=tuple(catalogue_products()),
        )
        return _built


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return build_model(tmp_path_factory.mktemp("model"))


@dataclass(frozen=True)
class SplitModel:
    """The same classifier as backbone + heads, as the trainer registers its fast updates:
    two heads on one backbone, and each full file composed from them."""

    backbone: bytes
    heads: tuple[bytes, bytes]
    fulls: tuple[bytes, bytes]
    classes: tuple[str, ...]


_split: SplitModel | None = None


def build_split_model() -> SplitModel:
    global _split
    with _lock:
        if _split is not None:
            return _split
        import numpy as np

        from edge2core.common.onnx_models import compose_onnx
        from edge2core.core.train.backbone import BACKBONE_ID, load_backbone
        from edge2core.core.train.head import embed, train_head
        from edge2core.core.train.onnx_export import export_backbone_onnx, head_onnx

        images, labels = training_photos()
        backbone = load_backbone()
        features = embed(backbone, images)
        classes = [sku(p) for p in range(PRODUCTS)]
        y = np.array(labels, dtype=np.int64)
        # The second head learns from all photos but the first of each product: other weights.
        later = np.arange(len(y)) % len(TRAIN_PHOTOS) != 0
        heads = tuple(head_onnx(train_head(features[rows], y[rows], classes, seed=0), BACKBONE_ID)
                      for rows in (np.ones(len(y), dtype=bool), later))
        backbone_bytes = export_backbone_onnx(backbone, BACKBONE_ID)
        fulls = tuple(compose_onnx(backbone_bytes, h) for h in heads)
        _split = SplitModel(backbone_bytes, heads, fulls, tuple(classes))  # type: ignore[arg-type]
        return _split


@pytest.fixture(scope="session")
def split_model() -> SplitModel:
    return build_split_model()
