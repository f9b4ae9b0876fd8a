"""The steps that turn a fitted head into shipped, checked and registered files.

* ``build_artifacts``: the head alone as ONNX (written directly, kilobytes), the edge's
  single-file model composed from the cached backbone ONNX and the head, and its INT8 twin
  from the cached INT8 backbone: no torch export, well under a second;
* ``verify_shipped``: the shipped files run with ONNX Runtime on val photos, against the
  head on cached embeddings (what the registry's metrics claim must be what the edge runs);
  an INT8 twin that loses more than ``int8_max_drop`` top-1 is not shipped (fp32 only);
* ``save_run_files``: ``runs/<run id>/`` record, training log and confusion picture;
* ``register_model``: the registry write, signed, with lineage pointing at those files.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.core.deliver.registry import ArtifactRef, ModelRegistry
from edge2core.core.train.backbones import Backbones
from edge2core.core.train.calibrate import calibration_picks, sample_indices, shipped_report
from edge2core.core.train.embeddings import preprocess_bytes
from edge2core.core.train.evaluation import confusion_png
from edge2core.core.train.head import predict_proba
from edge2core.core.train.onnx_export import compose_onnx, head_onnx, ort_session
from edge2core.core.train.records import metrics_summary
from edge2core.core.train.state import Artifacts, TrainingRun, timed

__all__ = ["build_artifacts", "register_model", "save_run_files", "verify_shipped"]

log = get_logger(__name__)

BATCH = 32  # photos per ONNX Runtime call when scoring shipped files


def build_artifacts(run: TrainingRun, backbones: Backbones, store: ObjectStore) -> None:
    """Head ONNX, composed fp32 model and (``int8`` parameter) the composed INT8 model."""
    with timed(run, "export"):
        run.say("exporting the head and composing the ONNX models")
        backbones.onnx(run.backbone)
        head = head_onnx(run.fitted_head(), run.backbone, extra_meta={"run_id": run.run_id})
        full = compose_onnx(backbones.proto(run.backbone), head)
    run.artifacts = Artifacts(head=head, full=full)
    if run.opts["int8"]:
        with timed(run, "export_int8"):
            backbones.int8(run.backbone, lambda: calibration_batch(run, store))
            run.artifacts.int8 = compose_onnx(backbones.proto(run.backbone, "int8"), head,
                                              extra_meta={"quantization": "int8-static"})


def calibration_batch(run: TrainingRun, store: ObjectStore) -> np.ndarray:
    """Up to ``int8_calibration`` train photos, every product represented (at least one photo
    each, drawn with the run's seed: the same photos for the same dataset and seed), preprocessed:
    what the INT8 backbone's activation ranges are measured on (only when it is first made).
    Measured on the grocery photos: drops of 0.000-0.007 over three draws (docs/models.md)."""
    pool = run.train_entries
    n = int(run.opts["int8_calibration"])
    picks = calibration_picks(run.labels[run.train_mask], n, run.seed)
    return preprocess_bytes([store.get(pool[i].key) for i in picks])


def verify_shipped(run: TrainingRun, store: ObjectStore, threads: int) -> None:
    """``metrics["shipped"]``: each shipped model's top-1 on (up to ``shipped_eval_max``) val
    photos, its agreement with the head and the largest probability difference."""
    shipped: dict[str, Any] = {}
    val_entries = run.val_entries
    sample = sample_indices(len(val_entries), int(run.opts["shipped_eval_max"]))
    if len(sample):
        x = preprocess_bytes([store.get(val_entries[i].key) for i in sample])
        y = run.labels[run.is_val][sample]
        reference = predict_proba(run.fitted_head(), run.features[run.is_val][sample])
        artifacts = run.shipped()
        for kind, data in (("fp32", artifacts.full), ("int8", artifacts.int8)):
            if data is not None:
                shipped[kind] = shipped_report(_run_onnx(data, x, threads), reference, y)
        if "int8" in shipped:
            shipped["int8"]["top1_drop"] = shipped["fp32"]["top1"] - shipped["int8"]["top1"]
            _refuse_lossy_int8(run, shipped["int8"], len(sample))
    run.metrics["shipped"] = shipped


def _refuse_lossy_int8(run: TrainingRun, report: dict[str, Any], n: int) -> None:
    """Drop the INT8 twin when it loses more than ``int8_max_drop`` top-1 over ``n`` val photos
    (and at least ``int8_min_photo_drop`` photos): the edge then runs this version in fp32
    (slower, not wrong), and the report says why."""
    tolerance = float(run.opts["int8_max_drop"])
    drop = float(report["top1_drop"])
    report["photos_lost"] = lost = round(drop * n)
    if drop <= tolerance + 1e-9 or lost < int(run.opts["int8_min_photo_drop"]):
        return
    report["refused"] = (f"INT8 loses {drop:.3f} top-1 against fp32 (tolerance {tolerance:.3f}): "
                         "this version ships fp32 only")
    run.shipped().int8 = None
    log.warning("INT8 artefact not shipped", run_id=run.run_id, top1_drop=round(drop, 4), tolerance=tolerance)


def _run_onnx(model: bytes, images: np.ndarray, threads: int) -> np.ndarray:
    session = ort_session(model, threads)
    return np.concatenate([session.run(None, {"image": images[i : i + BATCH]})[0]
                           for i in range(0, len(images), BATCH)])


def save_run_files(run: TrainingRun, store: ObjectStore) -> None:
    """The record (parameters, timings so far, metrics summary), the training log and the
    val confusion matrix, under ``runs/<run id>/``: what ``rerun`` and the lineage read."""
    prefix = f"runs/{run.run_id}"
    run.record.update(params=run.params_used, timings_s={k: round(v, 3) for k, v in run.timings.items()},
                      metrics_summary=metrics_summary(run.metrics))
    store.put(f"{prefix}/record.json", json.dumps(run.record, indent=1, default=str).encode())
    store.put(f"{prefix}/log.jsonl", b"".join(json.dumps(r, default=str).encode() + b"\n" for r in run.log))
    if "val" in run.metrics:
        title = f"dataset {run.dataset_version}, run {run.run_id}, val"
        store.put(f"{prefix}/confusion.png", confusion_png(run.metrics["val"]["confusion"], run.classes, title))


def register_model(run: TrainingRun, registry: ModelRegistry, backbones: Backbones, *, promote: bool) -> None:
    """Register the composed model with the head, the INT8 twin and references to the shared
    backbone files; promotion goes through the gate (a blocked model stays a candidate)."""
    artifacts = run.shipped()
    extra: dict[str, bytes | ArtifactRef] = {"head": artifacts.head, "backbone": backbones.onnx_ref(run.backbone)}
    if artifacts.int8 is not None:
        extra["int8"] = artifacts.int8
        extra["backbone_int8"] = backbones.onnx_ref(run.backbone, "int8")
    run.model = registry.register(
        artifacts.full, dataset_version=run.dataset_version, classes=run.classes, metrics=run.metrics,
        params=run.params_used, promote=promote, extra_artifacts=extra, lineage=_lineage(run), gated=True)
    log.info("model registered", version=run.model.version, stage=run.model.stage,
             val_top1=(run.metrics.get("val") or {}).get("top1"), run_id=run.run_id)


def _lineage(run: TrainingRun) -> dict[str, Any]:
    """Where the model came from, stored (and partly signed) with the version."""
    prefix = f"runs/{run.run_id}"
    return {
        "run_id": run.run_id, "dataset_version": run.dataset_version,
        "dataset_manifest_sha256": run.record["dataset_manifest_sha256"],
        "code_revision": run.record["code_revision"], "backbone": run.backbone,
        "base_backbone": run.record.get("base_backbone"), "record_key": f"{prefix}/record.json",
        "log_key": f"{prefix}/log.jsonl",
        "confusion_key": f"{prefix}/confusion.png" if "val" in run.metrics else None,
        "versions": run.record["versions"],
    }
