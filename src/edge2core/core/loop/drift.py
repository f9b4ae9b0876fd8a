"""Changed packaging: a product's newest kiosk captures no longer look like its class.

Kiosk captures carry the scanned SKU, so the core can score the captures that arrived after
the production model was made with that very model: when the mean probability of the scanned
product over its latest captures falls below a threshold, the product has drifted (new
packaging, a new supplier) and the model should learn its new look.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import Source, as_utc
from edge2core.core.curate.datasets import DatasetEntry
from edge2core.core.db.schema import ImageRow
from edge2core.core.deliver.registry import ModelInfo

Scorer = Callable[[ModelInfo, list[DatasetEntry]], np.ndarray]


def own_class_confidence(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Pure: the mean probability each photo's model gives to its scanned class."""
    return float(np.mean(probs[np.arange(len(labels)), np.asarray(labels)])) if len(labels) else 1.0


class DriftWatch:
    def __init__(self, sessions: sessionmaker[Session], score: Scorer, *, window: int,
                 min_photos: int) -> None:
        self._sessions = sessions
        self._score = score
        self._window = window
        self._min_photos = min_photos

    def recent(self, model: ModelInfo, skus: Sequence[str]) -> dict[str, list[DatasetEntry]]:
        """Per product, its latest kiosk captures stored after `model` was registered."""
        c = ImageRow
        # The newest `window` per product (a busy product must not crowd the others out).
        newest = func.row_number().over(partition_by=c.sku, order_by=c.stored_at.desc()).label("n")
        recent = (select(c.sha256, c.key, c.sku, c.split, c.site, c.device, newest)
                  .where(c.source == Source.KIOSK.value, c.sku.in_(list(skus)),
                         c.stored_at > as_utc(model.created_at))
                  .subquery())
        stmt = select(recent.c.sha256, recent.c.key, recent.c.sku, recent.c.split, recent.c.site,
                      recent.c.device).where(recent.c.n <= self._window)
        with self._sessions() as session:
            rows = session.execute(stmt).all()
        out: dict[str, list[DatasetEntry]] = defaultdict(list)
        for sha, key, sku, split, site, device in rows:
            out[sku].append(DatasetEntry(sha256=sha, key=key, sku=sku, split=split, site=site,
                                         device=device, source=Source.KIOSK))
        return {sku: entries for sku, entries in out.items() if len(entries) >= self._min_photos}

    def __call__(self, model: ModelInfo, skus: Sequence[str]) -> dict[str, float]:
        """sku -> mean own-class confidence of its recent captures (products with enough)."""
        index = {sku: i for i, sku in enumerate(model.classes)}
        recent = self.recent(model, [s for s in skus if s in index])
        if not recent:
            return {}
        entries = [e for group in recent.values() for e in group]
        probs = self._score(model, entries)
        out, start = {}, 0
        for sku, group in recent.items():
            labels = [index[sku]] * len(group)
            out[sku] = own_class_confidence(probs[start : start + len(group)], labels)
            start += len(group)
        return out
