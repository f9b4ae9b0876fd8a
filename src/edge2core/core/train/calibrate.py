"""The maths at the end of a run, on arrays only (no store, no files): calibration, the
metrics a model is registered with, and the comparison of a shipped artefact with the head.

Kept apart from the steps that read photos and write files so each rule can be checked on
small arrays, and so the numbers a run records are computed in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge2core.core.train.evaluation import classification_report, fit_temperature, threshold_for_precision
from edge2core.core.train.head import HeadModel, predict_proba

__all__ = ["average_heads", "calibrate_head", "calibration_indices", "calibration_picks", "coarse_map", "evaluate_head",
           "sample_indices", "shipped_report", "val_top1"]


def calibrate_head(head: HeadModel, val_x: np.ndarray, val_y: np.ndarray,
                   classes: list[str]) -> tuple[HeadModel, dict[str, Any]]:
    """Fit a temperature on val and fold it into the head's weights, so the probabilities
    the edge sees are calibrated and its "unrecognised" threshold means what it says.
    ``fit_temperature`` returns 1.0 on too few photos (a temperature fitted on a handful
    only makes the model overconfident)."""
    raw = predict_proba(head, val_x)
    temperature = fit_temperature(raw, val_y)
    calibration = {"temperature": temperature,
                   "ece_before": classification_report(raw, val_y, classes, with_confusion=False)["ece"]}
    scaled = HeadModel(head.weight / temperature, head.bias / temperature, head.classes,
                       {**head.info, "temperature": temperature})
    return scaled, calibration


def average_heads(first: HeadModel, second: HeadModel, val_x: np.ndarray, val_y: np.ndarray,
                  classes: list[str]) -> HeadModel:
    """One linear head whose logits are the mean of two heads' temperature-scaled logits on the
    same embeddings (``[N, D] -> [N, C]``): an ensemble that costs the edge nothing, since the
    mean of two linear maps is one. Each temperature is fitted on val first, so neither head
    outweighs the other by being more confident. Raises ValueError if the heads' classes or
    shapes differ."""
    if first.classes != second.classes or first.weight.shape != second.weight.shape:
        raise ValueError("only heads over the same classes and embeddings can be averaged")
    scaled = [calibrate_head(head, val_x, val_y, classes)[0] for head in (first, second)]
    return HeadModel((scaled[0].weight + scaled[1].weight) / 2, (scaled[0].bias + scaled[1].bias) / 2,
                     list(first.classes), {"method": "averaged", "of": [first.info.get("method"),
                                                                         second.info.get("method")]})


def evaluate_head(head: HeadModel, features: np.ndarray, labels: np.ndarray, train_mask: np.ndarray,
                  is_val: np.ndarray, classes: list[str], coarse: dict[str, str] | None,
                  calibration: dict[str, Any], target_precision: float) -> dict[str, Any]:
    """The model's ``metrics``: ``train`` (without per-class rows: they only restate the fit),
    ``val`` with the confusion matrix, and ``calibration`` completed with the ECE after
    scaling and the confidence threshold that reaches ``target_precision`` on val."""
    train = classification_report(predict_proba(head, features[train_mask]), labels[train_mask],
                                  classes, coarse, with_confusion=False)
    train.pop("per_class", None)
    metrics: dict[str, Any] = {"train": train}
    val_y = labels[is_val]
    if len(val_y):
        val_probs = predict_proba(head, features[is_val])
        metrics["val"] = classification_report(val_probs, val_y, classes, coarse)
        calibration["ece_after"] = metrics["val"]["ece"]
        calibration["recognised_threshold"] = threshold_for_precision(val_probs, val_y, target_precision)
    metrics["calibration"] = calibration
    return metrics


def val_top1(head: HeadModel, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 of a head on embeddings (to compare candidate heads on val)."""
    return float((predict_proba(head, x).argmax(1) == y).mean())


def coarse_map(classes: Sequence[str], found: Mapping[str, str]) -> dict[str, str] | None:
    """Fine class -> coarse class for the coarse metrics, from the catalogue's ``found``
    entries; a class without one is its own coarse class, and with none at all there are
    no coarse metrics (they would only repeat the fine ones)."""
    out = {sku: found[sku] for sku in classes if found.get(sku)}
    if len(out) == len(classes):
        return out
    return {**{s: s for s in classes}, **out} if out else None


def sample_indices(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices spread evenly over ``n`` photos (0: all of them), so the
    check of shipped artefacts stays bounded on big val splits."""
    sample = np.arange(n)
    if limit and n > limit:
        sample = np.linspace(0, n - 1, limit).round().astype(int)
    return sample


def shipped_report(probs: np.ndarray, reference: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """A shipped artefact's probabilities against the head's on the same photos: its top-1,
    the head's, how often they agree and the largest probability difference."""
    return {
        "n": len(y), "top1": float((probs.argmax(1) == y).mean()),
        "top1_reference": float((reference.argmax(1) == y).mean()),
        "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(probs - reference).max()),
    }


def calibration_indices(labels: np.ndarray, per_class: int, seed: int, limit: int | None = None) -> np.ndarray:
    """Indices of the photos an INT8 backbone's activation ranges are measured on: up to
    ``per_class`` photos of every class, drawn with a generator seeded by ``seed`` (the same
    photos every time for the same train split), sorted; at most ``limit`` in all (classes
    taken in turn, so each keeps a share).  Every product is represented, so no class's
    activations fall outside the measured ranges because its photos were never looked at.

    Raises ``ValueError`` if ``per_class`` < 1."""
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    per = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    rounds = [idx[r] for r in range(per_class) for idx in per if r < len(idx)]
    return np.sort(np.asarray(rounds[:limit] if limit else rounds, dtype=np.int64))


def calibration_picks(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The trainer's calibration choice: about ``n`` photos, every class at least once (so more
    than ``n`` when there are more classes), ``calibration_indices`` seeded with ``seed``."""
    classes = max(1, len(np.unique(labels)))
    return calibration_indices(labels, max(1, n // classes), seed, limit=max(n, classes))
