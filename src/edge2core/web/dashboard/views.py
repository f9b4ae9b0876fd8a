"""Pure shaping of what the core knows into what a page shows (no HTTP, no templates)."""

from __future__ import annotations

from typing import Any

from edge2core.core.deliver.model_info import ModelInfo


def fleet_rows(sites: list[dict[str, Any]], models: dict[str, dict], canary: ModelInfo | None,
               production: ModelInfo | None) -> list[dict[str, Any]]:
    """Each site's status row with what it should run (canary or fleet) and its last model
    report (live, refused, rolled back)."""
    rows = []
    for row in sites:
        site = row["site"]
        target = canary if canary is not None and site in canary.canary_sites else production
        rows.append({**row, "target_version": target.version if target else None,
                     "target_stage": "canary" if target is canary and canary else "fleet",
                     "model_report": models.get(site)})
    return rows


def where_running(rows: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Model version -> the sites running it now."""
    out: dict[int, list[str]] = {}
    for row in rows:
        if row.get("model_version") is not None:
            out.setdefault(int(row["model_version"]), []).append(row["site"])
    return out


def confusion_cells(model: ModelInfo) -> dict[str, Any] | None:
    """The validation confusion matrix as rows of (count, share of its row) for a heat map;
    None when the run recorded none."""
    val = model.metrics.get("val") or {}
    matrix = val.get("confusion")
    if not matrix:
        return None
    rows = []
    for label, counts in zip(model.classes, matrix, strict=False):
        total = sum(counts) or 1
        rows.append({"label": label, "cells": [(n, n / total) for n in counts], "total": sum(counts)})
    return {"classes": list(model.classes), "rows": rows}


def metric_summary(model: ModelInfo) -> list[tuple[str, str]]:
    """The headline numbers of a model, formatted."""
    val = model.metrics.get("val") or {}
    out = []
    for key, label in (("top1", "top-1 (val)"), ("top5", "top-5 (val)"), ("ece", "calibration error (ECE)"),
                       ("n", "val photos")):
        value = val.get(key)
        if value is not None:
            out.append((label, f"{value:.3f}" if isinstance(value, float) else str(value)))
    threshold = model.metrics.get("recognised_threshold")
    if isinstance(threshold, dict) and threshold.get("threshold") is not None:
        out.append(("recognised threshold", f"{threshold['threshold']:.2f}"))
    return out


def class_balance(stats: dict[str, Any]) -> dict[str, Any]:
    """Photos per class and split for a bar chart: labels, train, val."""
    labels = sorted(stats.get("per_class") or {})
    split = stats.get("per_class_split") or {}
    return {"labels": labels,
            "train": [int(split.get(f"{sku}/train", 0)) for sku in labels],
            "val": [int(split.get(f"{sku}/val", 0)) for sku in labels]}


def reliability(model: ModelInfo, size: int = 200) -> dict[str, Any] | None:
    """The validation reliability diagram in SVG units (a `size` square, y down): a bar per
    confidence bin as high as the bin's accuracy, a dot at its mean confidence, and the
    photos in it. None for a model whose evaluation stored no bins (before they were kept)."""
    bins = (model.metrics.get("val") or {}).get("reliability")
    if not bins:
        return None
    out = []
    for b in bins:
        if not b.get("n"):
            continue
        x, width = b["lo"] * size, (b["hi"] - b["lo"]) * size
        height = max(size * b["accuracy"], 2.0)  # a bin none of whose photos was right still shows
        out.append({"x": round(x + 1, 1), "width": round(max(width - 2, 1), 1),
                    "y": round(size - height, 1), "height": round(height, 1),
                    "dot_x": round(x + width / 2, 1), "dot_y": round(size * (1 - b["confidence"]), 1),
                    "label": f"{b['lo']:.1f}–{b['hi']:.1f}: {b['n']} photos, "
                             f"accuracy {b['accuracy']:.2f}, confidence {b['confidence']:.2f}"})
    return {"size": size, "bins": out, "n": sum(int(b.get("n") or 0) for b in bins)}
