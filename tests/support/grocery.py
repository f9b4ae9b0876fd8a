"""Grocery photos for tests that train real models (skipped where the dataset is absent)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from edge2core.common.events import utcnow
from edge2core.common.objectstore import image_key
from edge2core.core.db.schema import ImageRow
from tests.support.paths import GROCERY as DATASET

needs_grocery = pytest.mark.skipif(not (DATASET / "train.txt").is_file(),
                                   reason=f"grocery dataset not found at {DATASET}")


def sku(i: int) -> str:
    return f"SKU-{i:04d}"


def photos_of(fine: int, split: str, n: int) -> list[bytes]:
    out = []
    for line in (DATASET / f"{split}.txt").read_text().splitlines():
        if line.strip() and int(line.split(",")[1]) == fine and len(out) < n:
            out.append((DATASET / line.split(",")[0].strip()).read_bytes())
    return out


def store_kiosk(services, photos: Sequence[bytes], product: str, split: str,  # type: ignore[no-untyped-def]
                site: str = "store-1", devices: int = 2) -> None:
    """As the receiver records them: kiosk captures from `devices` kiosks, labelled by the scan."""
    with services.sessions.begin() as session:
        for i, data in enumerate(photos):
            digest = hashlib.sha256(data).hexdigest()
            if session.get(ImageRow, digest) is not None:
                continue
            services.store.put(image_key(digest), data)
            session.add(ImageRow(
                sha256=digest, key=image_key(digest), size=len(data), width=348, height=348,
                site=site, device=f"kiosk-{i % devices}", source="kiosk", sku=product,
                received_at=utcnow(), stored_at=utcnow(), top_guesses=[], split=split,
                label_origin="scan"))
