"""A site's golden set: a few of its own labelled kiosk photos per product, kept on disk, on
which every new model must answer well before it may serve (the smoke test)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from edge2core.common.fsutil import write_atomic


@dataclass(frozen=True)
class GoldenPhoto:
    sku: str
    data: bytes


class GoldenSet:
    def __init__(self, root: Path, per_sku: int = 2, max_photos: int = 400) -> None:
        self.root = root
        self.per_sku = per_sku
        self.max_photos = max_photos
        self._lock = threading.Lock()
        self._index_path = root / "index.json"
        self._index: dict[str, list[str]] = (
            json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}
        )

    def offer(self, sku: str, sha256: str, data: bytes) -> bool:
        """Keep this photo if its product has fewer than `per_sku` and there is room."""
        with self._lock:
            kept = self._index.setdefault(sku, [])
            total = sum(len(v) for v in self._index.values())
            if len(kept) >= self.per_sku or total >= self.max_photos or sha256 in kept:
                return False
            write_atomic(self.root / f"{sha256}.jpg", [data])
            kept.append(sha256)
            write_atomic(self._index_path, [json.dumps(self._index).encode()])
            return True

    def photos(self) -> list[GoldenPhoto]:
        with self._lock:
            items = [(sku, sha) for sku, shas in self._index.items() for sha in shas]
        return [
            GoldenPhoto(sku, (self.root / f"{sha}.jpg").read_bytes())
            for sku, sha in items
            if (self.root / f"{sha}.jpg").is_file()
        ]
