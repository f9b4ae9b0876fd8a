"""The steps that make a run's head: pick or fine-tune the backbone, embed, fit, calibrate,
evaluate.  Each takes the run's state and fills in its part (``core.train.state``).

* fast path: ``choose_backbone`` -> ``embed_all`` -> ``fit_fast`` (L-BFGS head on cached
  embeddings, seconds);
* full path: ``fit_full`` (fine-tune with augmentation, minutes; a new backbone version)
  -> ``embed_all`` (with the new backbone: those embeddings are the cache of later fast
  updates) -> ``compare_heads`` (the fine-tuned classifier against an L-BFGS head refitted on
  the new embeddings; ``params={"full_head": ...}`` picks the shipped one);
* both: ``calibrate`` then ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edge2core.core.curate.datasets import DatasetEntry
from edge2core.core.train.backbones import IMAGENET_BACKBONE, Backbones
from edge2core.core.train.calibrate import average_heads, calibrate_head, evaluate_head, val_top1
from edge2core.core.train.finetune import FineTuneConfig
from edge2core.core.train.head import HeadModel, train_head
from edge2core.core.train.jobs import FineTuneJob, JobRunner
from edge2core.core.train.state import FAST_DEFAULTS, Say, TrainingRun, timed

__all__ = ["Embed", "calibrate", "choose_backbone", "compare_heads", "embed_all", "evaluate",
           "fit_fast", "fit_full", "full_head"]

# (photos, backbone version, progress) -> (embeddings [N, 1280], how many were computed)
Embed = Callable[[list[DatasetEntry], str, Say | None], tuple[np.ndarray, int]]
FULL_HEADS = ("finetuned", "refit", "averaged")


def _shared_params(run: TrainingRun) -> dict[str, Any]:
    return {k: run.opts[k] for k in FAST_DEFAULTS}


def choose_backbone(run: TrainingRun, backbones: Backbones) -> None:
    """Fast path: the pinned ``backbone`` parameter, else the current one."""
    run.backbone = str(run.opts.get("backbone") or backbones.current())
    run.params_used = {"path": "fast", "seed": run.seed, "backbone": run.backbone, **_shared_params(run)}


def fit_full(run: TrainingRun, runner: JobRunner, backbones: Backbones, embed: Embed, threads: int) -> None:
    """Full path: fine-tune ``base_backbone`` (ImageNet by default) end to end, where ``runner``
    runs jobs (in this process or on a cluster); the weights become a new backbone version,
    exported to ONNX at once since every later step needs it."""
    base = str(run.opts.get("base_backbone") or IMAGENET_BACKBONE)
    cfg = FineTuneConfig.from_dict({**run.opts, "seed": run.seed})
    cfg.check()  # refused before the minutes of fine-tuning, not after
    full_head(run.opts)
    if threads:
        torch.set_num_threads(threads)
    with timed(run, "finetune"):
        keys, labels = _train_photos(run, cfg.catalogue_copies)
        run.say(f"fine-tuning {base} on {int(run.train_mask.sum())} photos and {len(keys) - int(run.train_mask.sum())}"
                f" catalogue image copies, {cfg.epochs} epochs")
        init_head = _linear_probe(run, base, embed) if cfg.init == "linear_probe" else None
        job = FineTuneJob(base=base, train_keys=keys,
                          train_labels=labels, val_keys=tuple(e.key for e in run.val_entries),
                          val_labels=run.labels[run.is_val], classes=tuple(run.classes), config=cfg,
                          init_head=init_head, threads=threads, progress=run.show_progress)
        result = runner.finetune(job, backbones, on_epoch=lambda rec: _log_epoch(run, rec))
    with timed(run, "export_backbone"):
        run.backbone = backbones.save_finetuned(result.backbone)
        backbones.onnx(run.backbone)
    run.head = result.head
    run.record.update(base_backbone=base, device=result.device, best_epoch=result.best_epoch)
    run.params_used = {"path": "full", "seed": run.seed, "base_backbone": base, **cfg.to_dict(),
                       **_shared_params(run)}


def _train_photos(run: TrainingRun, catalogue_copies: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The train split's keys and labels, then each product's catalogue image ``catalogue_copies``
    times (cropped anew each time it is drawn): the clean view sharpens what the product looks
    like (+4.7 points val top-1 on the grocery photos, docs/models.md)."""
    extra = [item for item in run.catalogue_images for _ in range(catalogue_copies)]
    keys = tuple(e.key for e in run.train_entries) + tuple(key for key, _ in extra)
    labels = np.concatenate([run.labels[run.train_mask], np.asarray([i for _, i in extra], dtype=np.int64)])
    return keys, labels.astype(run.labels.dtype)


def _linear_probe(run: TrainingRun, base: str, embed: Embed) -> HeadModel:
    """LP-FT: an L-BFGS head on the base backbone's frozen embeddings to start the classifier."""
    features, _ = embed(run.train_entries, base, run.say)
    return train_head(features, run.labels[run.train_mask], run.classes, **run.head_options)


def _log_epoch(run: TrainingRun, rec: dict[str, Any]) -> None:
    run.log.append(rec)
    run.say(f"epoch {rec['epoch']}: train loss {rec['train_loss']:.3f}, val loss "
            f"{rec['val_loss']:.3f}, val top-1 {rec['val_top1']:.3f} ({rec['seconds']:.0f} s)")


def embed_all(run: TrainingRun, embed: Embed) -> None:
    """Every photo's embedding with the run's backbone (only photos new to it are computed)."""
    run.record["backbone"] = run.backbone
    with timed(run, "embed"):
        run.features, computed = embed(run.entries, run.backbone, run.say)
    run.record["embeddings_computed"] = computed


def fit_fast(run: TrainingRun) -> None:
    """Fast path: the L-BFGS linear head on the train embeddings."""
    with timed(run, "train_head"):
        run.say("training the head")
        head = train_head(run.features[run.train_mask], run.labels[run.train_mask], run.classes,
                          **run.head_options)
    run.head = head
    run.log.append({"epoch": 1, "method": "lbfgs", "train_loss": head.info.get("train_loss"),
                    "iterations": head.info.get("iterations")})


def full_head(opts: dict[str, Any]) -> str:
    """The head the full path ships (``params["full_head"]``, default the fine-tuned classifier);
    ValueError names the choices."""
    choice = opts.get("full_head", "finetuned")
    if choice not in FULL_HEADS:
        raise ValueError(f"full_head must be one of {', '.join(FULL_HEADS)}, not {choice!r}")
    return str(choice)


def compare_heads(run: TrainingRun) -> None:
    """Full path: record the fine-tuned classifier's and a refitted L-BFGS head's val top-1
    (centre crops, no dropout) and keep the one ``full_head`` names."""
    choice = full_head(run.opts)
    refit = train_head(run.features[run.train_mask], run.labels[run.train_mask], run.classes,
                       **run.head_options)
    heads = {"finetuned": run.fitted_head(), "refit": refit}
    if run.is_val.any():
        x, y = run.features[run.is_val], run.labels[run.is_val]
        heads["averaged"] = average_heads(heads["finetuned"], refit, x, y, run.classes)
        for name, head in heads.items():
            run.alternatives[f"{name}_val_top1"] = val_top1(head, x, y)
    elif choice == "averaged":
        raise ValueError("full_head 'averaged' needs val photos (each head's temperature is fitted on val)")
    run.alternatives["shipped"] = choice
    run.params_used["full_head"] = choice
    run.head = heads[choice]
    run.record["head_alternatives"] = run.alternatives
    run.say(f"heads on val: {run.alternatives}")


def calibrate(run: TrainingRun) -> dict[str, Any]:
    """Fold a val-fitted temperature into the head when asked and there are val photos;
    returns the calibration entry of the metrics (temperature 1.0 when skipped)."""
    val_y = run.labels[run.is_val]
    if not (run.opts["calibrate"] and len(val_y) >= 2):
        return {"temperature": 1.0}
    run.head, calibration = calibrate_head(run.fitted_head(), run.features[run.is_val], val_y, run.classes)
    return calibration


def evaluate(run: TrainingRun, coarse: dict[str, str] | None, calibration: dict[str, Any]) -> None:
    """The metrics the model is registered with (``core.train.calibrate.evaluate_head``)."""
    run.metrics = evaluate_head(run.fitted_head(), run.features, run.labels, run.train_mask, run.is_val,
                                run.classes, coarse, calibration, float(run.opts["target_precision"]))
    if run.record.get("head_alternatives"):
        run.metrics["head_alternatives"] = run.record["head_alternatives"]
