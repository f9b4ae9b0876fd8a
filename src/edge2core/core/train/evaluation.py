"""Evaluation of a classifier from its output probabilities (numpy only, plus matplotlib for
the confusion-matrix picture).

* ``classification_report``: top-1 / top-5 on fine classes and on coarse classes (a coarse
  prediction is the coarse class of the predicted fine class; coarse top-5 counts a hit when
  any of the 5 best fine classes has the right coarse class), mean per-class top-1, NLL,
  per-class precision / recall / support, the confusion matrix, calibration (ECE and the
  reliability diagram's bins, ``reliability_bins``, which the dashboard draws);
* ``fit_temperature``: one scalar T on val minimising the NLL of ``softmax(log p / T)``; for a
  linear head it is folded into the weights (``HeadModel.scaled``), so the probabilities the
  edge sees are calibrated and its "unrecognised" threshold means what it says;
* ``threshold_for_precision``: the lowest confidence threshold whose recognised answers
  (confidence >= threshold) reach a target precision on val, kept within a floor and a cap
  and not estimated on too few photos;
* ``confusion_png``: the confusion matrix as a PNG (Agg backend, no display needed).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "classification_report",
    "confusion_matrix",
    "confusion_png",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "temperature_scale",
    "threshold_for_precision",
    "topk_hits",
]


def topk_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.argsort(-probs, axis=1)
    return (top == labels[:, None]).any(axis=1)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins on the top-1 confidence."""
    if probs.shape[0] == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's data: for each of ``bins`` equal-width bins of top-1
    confidence, ``lo``/``hi`` (its edges, 0..1), ``n`` (photos in it), ``confidence`` (their
    mean top-1 confidence) and ``accuracy`` (the share right); both None in an empty bin."""
    conf = probs.max(axis=1) if probs.shape[0] else np.zeros(0)
    correct = probs.argmax(axis=1) == labels if probs.shape[0] else np.zeros(0, dtype=bool)
    out = []
    for i, (lo, hi) in enumerate(itertools.pairwise(np.linspace(0.0, 1.0, bins + 1))):
        mask = ((conf > lo) | (i == 0)) & (conf <= hi)  # the first bin keeps a confidence of 0
        n = int(mask.sum())
        out.append({"lo": round(float(lo), 4), "hi": round(float(hi), 4), "n": n,
                    "confidence": float(conf[mask].mean()) if n else None,
                    "accuracy": float(correct[mask].mean()) if n else None})
    return out


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    z = np.log(np.clip(probs.astype(np.float64), 1e-30, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, *, min_n: int = 30, bounds: tuple[float, float] = (0.2, 10.0)
) -> float:
    """The T in ``bounds`` minimising val NLL of ``softmax(log p / T)`` (golden-section on
    log T; the NLL is convex in 1/T).  Returns 1.0 with fewer than ``min_n`` photos: a
    temperature fitted on a handful of (often all-correct) photos only makes the model
    overconfident.  The bounds keep one odd val set from doing the same."""
    if probs.shape[0] < max(2, min_n):
        return 1.0
    logp = np.log(np.clip(probs.astype(np.float64), 1e-30, None))
    y = labels.astype(np.int64)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float((lse - z[np.arange(len(y)), y]).mean())

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


# The "recognised" threshold a run ships is kept inside these bounds. On a small val set one
# confident mistake drives the precision-target threshold to the top (20 photos per class once
# gave 0.9989, and correct answers at 0.998 were called unrecognised): a cap keeps confident
# answers answered; a floor keeps near-guesses among many classes unanswered. Below
# THRESHOLD_MIN_PHOTOS val photos no threshold is estimated at all (the edge's default, 0.5).
THRESHOLD_FLOOR = 0.3
THRESHOLD_CAP = 0.9
THRESHOLD_MIN_PHOTOS = 30


def threshold_for_precision(probs: np.ndarray, labels: np.ndarray, target: float = 0.95, *,
                            floor: float = THRESHOLD_FLOOR, cap: float = THRESHOLD_CAP,
                            min_photos: int = THRESHOLD_MIN_PHOTOS) -> dict[str, Any]:
    """The confidence threshold the edge uses to call an answer "recognised".

    `raw_threshold` is the lowest t such that answers with confidence >= t are right with
    precision >= target on this set; `threshold` is it kept within [floor, cap] (`method` says
    which: precision_target, capped, floored), or None with fewer than `min_photos` photos or
    when no t reaches the target (`method` too_few_photos / unreachable: the edge then uses its
    default). `coverage` and `precision` are measured at `threshold`, so they stay honest when
    it was clamped.
    """
    n = probs.shape[0]
    answer: dict[str, Any] = {"target_precision": target, "photos": int(n), "floor": floor,
                              "cap": cap, "raw_threshold": None, "threshold": None,
                              "coverage": 0.0, "precision": None}
    if n < max(1, min_photos):
        return {**answer, "method": "too_few_photos"}
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-conf, kind="stable")
    cum_prec = np.cumsum(correct[order]) / np.arange(1, n + 1)
    ok = np.nonzero(cum_prec >= target)[0]
    if ok.size == 0:
        return {**answer, "method": "unreachable"}
    raw = float(conf[order][int(ok[-1])])  # the largest prefix (lowest threshold) meeting it
    applied = min(max(raw, floor), cap)
    method = "capped" if raw > cap else "floored" if raw < floor else "precision_target"
    answered = conf >= applied
    precision = float(correct[answered].mean()) if answered.any() else None
    return {**answer, "raw_threshold": raw, "threshold": applied, "method": method,
            "coverage": float(answered.mean()), "precision": precision}


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    coarse_of: dict[str, str] | None = None,
    *,
    with_confusion: bool = True,
) -> dict[str, Any]:
    """Metrics of probabilities (N, C) against integer labels (N,) over ``classes``."""
    probs = np.asarray(probs, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    n, c = probs.shape[0], len(classes)
    out: dict[str, Any] = {"n": int(n)}
    if n == 0:
        out.update(top1=float("nan"), top5=float("nan"))
        return out
    pred = probs.argmax(axis=1)
    correct = pred == y
    out["top1"] = float(correct.mean())
    out["top5"] = float(topk_hits(probs, y, 5).mean())
    out["nll"] = float(-np.log(np.clip(probs[np.arange(n), y], 1e-12, None)).mean())
    out["mean_class_top1"] = float(np.mean([correct[y == k].mean() for k in np.unique(y)]))
    out["ece"] = expected_calibration_error(probs, y)
    out["reliability"] = reliability_bins(probs, y)
    out["mean_confidence"] = float(probs.max(axis=1).mean())
    if coarse_of:
        coarse_names = sorted({coarse_of.get(s, s) for s in classes})
        cidx = {name: i for i, name in enumerate(coarse_names)}
        fine_to_coarse = np.array([cidx[coarse_of.get(s, s)] for s in classes])
        cy = fine_to_coarse[y]
        out["coarse_top1"] = float((fine_to_coarse[pred] == cy).mean())
        k = min(5, c)
        topk = np.argsort(-probs, axis=1)[:, :k]
        out["coarse_top5"] = float((fine_to_coarse[topk] == cy[:, None]).any(axis=1).mean())
        out["coarse_classes"] = len(coarse_names)
    cm = confusion_matrix(y, pred, c)
    per_class = {}
    for k, name in enumerate(classes):
        support = int(cm[k].sum())
        predicted = int(cm[:, k].sum())
        per_class[name] = {
            "support": support,
            "recall": float(cm[k, k] / support) if support else None,
            "precision": float(cm[k, k] / predicted) if predicted else None,
        }
    out["per_class"] = per_class
    if with_confusion:
        out["confusion"] = cm.tolist()
    return out


def confusion_png(cm: np.ndarray | list, classes: Sequence[str], title: str = "") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.22 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), labels=list(classes), rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), labels=list(classes), fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title, fontsize=9)
        if len(classes) <= 20:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    if cm[i, j]:
                        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=6,
                                color="white" if norm[i, j] > 0.5 else "black")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()
