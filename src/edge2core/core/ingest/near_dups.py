"""Near-duplicate groups and leak-free splits (pure: no database, no files).

A photo's train/val split is a function of the id of its near-duplicate group's first photo,
decided on arrival, so it never moves between dataset versions and near-duplicates stay on one
side. A group is found by the core's own 64-bit dHash: a photo within `bits` (Hamming distance)
of an earlier photo joins that photo's group; featureless photos are never grouped.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image

from edge2core.common.images import RejectReason, dhash
from edge2core.core.ingest.errors import InvalidUpload


def stable_split(sha256: str, val_percent: int) -> str:
    """A photo's split depends on its id only, so it never moves between dataset versions."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def photo_dhash(data: bytes) -> int:
    """The core's own 64-bit dHash of a stored photo (decoded at 1/8 scale where JPEG allows)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (64, 64))
            return dhash(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidUpload(f"cannot decode the photo: {exc}", code=RejectReason.CORRUPT.value) from exc


def featureless(phash: int) -> bool:
    """A flat or evenly graded photo hashes to (nearly) all zeros or ones: it has no features to
    call it a near-duplicate of anything, so it is not grouped."""
    return phash.bit_count() <= 4 or phash.bit_count() >= 60


class NearDupIndex:
    """Perceptual hashes of stored photos, for assigning a new photo to a near-duplicate group.

    A photo within `bits` (Hamming distance) of a stored photo joins that photo's group (the
    earliest such photo on ties), else starts its own group. A group's split is the split of its
    first photo, so near-duplicates land on the same side and nobody's split ever moves.
    `load` gives the stored photos' (hash, group), earliest first; it is called on first use and
    again after `invalidate()` (deletions), which also calls `on_invalidate` (several core
    processes: tell the others, see `ingest.rows`).
    """

    def __init__(self, load: Callable[[], Iterable[tuple[int, str]]], bits: int,
                 on_invalidate: Callable[[], None] | None = None) -> None:
        self._load_stored = load
        self._on_invalidate = on_invalidate
        self.bits = bits
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._groups: list[str] = []
        self._count = 0
        self._loaded = False
        self.lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def invalidate(self) -> None:
        with self.lock:
            self._loaded = False
        if self._on_invalidate is not None:
            self._on_invalidate()

    def invalidate_locked(self) -> None:
        self._loaded = False

    def _load(self) -> None:
        self.reset(self._load_stored())

    def reset(self, stored: Iterable[tuple[int, str]]) -> None:
        """Replace the index by `stored` (hash, group), earliest first. Call with `lock` held."""
        rows = [(h, g) for h, g in stored if not featureless(h)]
        self._hashes = np.array([h for h, _ in rows], dtype=np.uint64)
        self._groups = [g for _, g in rows]
        self._count = len(rows)
        self._loaded = True

    def extend(self, stored: Iterable[tuple[int, str]]) -> None:
        """Add photos recorded since (by another process), earliest first. With `lock` held."""
        for phash, group in stored:
            self.add(phash, group)

    def group_for(self, sha256: str, phash: int | None) -> str:
        """Call with `lock` held, and `add` the photo before releasing it."""
        if not self._loaded:
            self._load()
        if phash is None or featureless(phash) or self.bits <= 0 or self._count == 0:
            return sha256
        distances = np.bitwise_count(self._hashes[: self._count] ^ np.uint64(phash))
        nearest = int(np.argmin(distances))  # the first (earliest) of the nearest
        return self._groups[nearest] if int(distances[nearest]) <= self.bits else sha256

    def add(self, phash: int | None, group: str) -> None:
        if phash is None or featureless(phash) or not self._loaded:
            return
        if self._count == len(self._hashes):
            grown = np.zeros(max(1024, 2 * len(self._hashes)), dtype=np.uint64)
            grown[: self._count] = self._hashes[: self._count]
            self._hashes = grown
        self._hashes[self._count] = np.uint64(phash)
        self._groups.append(group)
        self._count += 1
