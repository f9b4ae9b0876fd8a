"""The promotion gate: a candidate against production on the same frozen evaluation set.

The evaluation set is the val split of one dataset version (``[core.gate] eval_dataset``, by
default the candidate's), restricted to the products both models know, so a candidate that
adds a product is judged on the products production could already answer.  Both models'
shipped artefacts are scored on exactly those photos (through the embedding cache when a
model has a head artefact on a known backbone, which is numerically the composed model).
The gate fails when top-1 drops by more than ``max_top1_drop`` or any class's recall (with at
least ``min_class_support`` photos) drops by more than ``max_class_recall_drop``, in each case
only if at least ``min_photo_drop`` photos (net) went wrong: with a few val photos per class,
one photo is a 20-30% recall swing, which is noise, not a regression. An empty evaluation set
fails closed.

A first model (no production model yet) is held to an absolute floor instead: top-1 on its
own val split of at least ``first_min_top1`` over at least ``first_min_val_photos`` photos,
and at least ``first_min_photos_per_class`` train photos of every class.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from edge2core.config import PromotionGate as GateConfig
from edge2core.core.curate.datasets import DatasetEntry, DatasetStore
from edge2core.core.deliver.registry import ModelInfo

Scorer = Callable[[ModelInfo, list[DatasetEntry]], np.ndarray]


class GateReport(BaseModel):
    passed: bool
    candidate: int
    baseline: int | None  # None: a first model, held to the absolute floor
    eval_set: dict[str, Any]
    top1_candidate: float | None = None
    top1_baseline: float | None = None
    top1_drop: float | None = None
    class_recall_drops: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)


def eval_set_id(entries: list[DatasetEntry]) -> str:
    return hashlib.sha256("\n".join(sorted(e.sha256 for e in entries)).encode()).hexdigest()


class ModelGate:
    def __init__(self, config: GateConfig, datasets: DatasetStore, scorer: Scorer) -> None:
        self.config = config
        self._datasets = datasets
        self._scorer = scorer

    def eval_entries(self, candidate: ModelInfo, baseline: ModelInfo) -> tuple[int, list[DatasetEntry]]:
        version = self.config.eval_dataset or candidate.dataset_version
        shared = set(candidate.classes) & set(baseline.classes)
        entries = [e for e in self._datasets.entries(version) if e.split == "val" and e.sku in shared]
        return version, sorted(entries, key=lambda e: e.sha256)

    def check_first(self, candidate: ModelInfo) -> GateReport:
        """The floor for a first model: its own val top-1, how many val photos that rests on,
        and the train photos of its thinnest class."""
        cfg = self.config
        val = candidate.metrics.get("val") or {}
        n = int(val.get("n") or 0)
        top1 = val.get("top1")
        report = GateReport(passed=False, candidate=candidate.version, baseline=None,
                            eval_set={"dataset_version": candidate.dataset_version, "split": "val", "n": n,
                                      "first_model": True},
                            top1_candidate=top1, config=cfg.model_dump())
        if not cfg.enabled:  # before reading the dataset: a disabled gate needs none
            report.passed = True
            report.reasons.append("gate disabled")
            return report
        train = Counter(e.sku for e in self._datasets.entries(candidate.dataset_version) if e.split == "train")
        if n < cfg.first_min_val_photos:
            report.reasons.append(f"a first model judged on {n} val photos (< {cfg.first_min_val_photos}) "
                                  "is not served: send more photos")
        elif top1 is None or not top1 >= cfg.first_min_top1:
            report.reasons.append(f"a first model's val top-1 {top1} is under the floor {cfg.first_min_top1}")
        thin = sorted(sku for sku in candidate.classes if train[sku] < cfg.first_min_photos_per_class)
        if thin:
            report.reasons.append(f"{len(thin)} class(es) with fewer than {cfg.first_min_photos_per_class} "
                                  f"train photos, e.g. {thin[0]}")
        report.passed = not report.reasons
        return report

    def check(self, candidate: ModelInfo, baseline: ModelInfo) -> GateReport:
        cfg = self.config
        if not cfg.enabled:  # before reading the evaluation set: a disabled gate needs none
            return GateReport(passed=True, candidate=candidate.version, baseline=baseline.version,
                              eval_set={"dataset_version": cfg.eval_dataset or candidate.dataset_version,
                                        "split": "val"},
                              reasons=["gate disabled"], config=cfg.model_dump())
        version, entries = self.eval_entries(candidate, baseline)
        info = {"dataset_version": version, "split": "val", "n": len(entries), "id": eval_set_id(entries)}
        report = GateReport(passed=False, candidate=candidate.version, baseline=baseline.version,
                            eval_set=info, config=cfg.model_dump())
        if not cfg.enabled:
            report.passed = True
            report.reasons.append("gate disabled")
            return report
        if not entries:
            report.reasons.append("the frozen evaluation set is empty: no val photos of shared products")
            return report
        truth = np.array([e.sku for e in entries])
        recalls: dict[int, dict[str, float]] = {}
        top1: dict[int, float] = {}
        hits: dict[int, np.ndarray] = {}
        for model in (candidate, baseline):
            probs = self._scorer(model, entries)
            pred = np.array(model.classes)[probs.argmax(axis=1)]
            hit = hits[model.version] = pred == truth
            top1[model.version] = float(hit.mean())
            recalls[model.version] = {
                sku: float(hit[truth == sku].mean())
                for sku in np.unique(truth) if (truth == sku).sum() >= cfg.min_class_support
            }
        report.top1_candidate = top1[candidate.version]
        report.top1_baseline = top1[baseline.version]
        report.top1_drop = round(report.top1_baseline - report.top1_candidate, 6)
        drops = {
            sku: round(recalls[baseline.version][sku] - recalls[candidate.version][sku], 6)
            for sku in recalls[baseline.version]
        }
        report.class_recall_drops = {k: v for k, v in sorted(drops.items(), key=lambda kv: -kv[1]) if v > 0}
        lost = _photos_lost(hits[baseline.version], hits[candidate.version], truth)
        if report.top1_drop > cfg.max_top1_drop + 1e-9 and sum(lost.values()) >= cfg.min_photo_drop:
            report.reasons.append(
                f"top-1 drops by {report.top1_drop:.3f} ({report.top1_baseline:.3f} -> "
                f"{report.top1_candidate:.3f}) > {cfg.max_top1_drop}")
        worse = {k: v for k, v in drops.items()
                 if v > cfg.max_class_recall_drop + 1e-9 and lost.get(k, 0) >= cfg.min_photo_drop}
        if worse:
            worst = max(worse, key=lambda k: worse[k])
            report.reasons.append(
                f"recall drops by more than {cfg.max_class_recall_drop} for {len(worse)} class(es), "
                f"worst {worst} by {worse[worst]:.3f}")
        report.passed = not report.reasons
        return report


def _photos_lost(baseline: np.ndarray, candidate: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Per class, how many more eval photos the candidate gets wrong than the baseline (net)."""
    return {str(sku): int(baseline[truth == sku].sum() - candidate[truth == sku].sum())
            for sku in np.unique(truth)}
