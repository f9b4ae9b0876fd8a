"""Training runs: dataset version in, registered (signed, evaluated) model version out.

Two paths, one ending:

* **fast** (seconds): embeddings of every photo with the current backbone, from the embedding
  cache (``core.train.embeddings``; computed with the backbone's ONNX Runtime export only for
  photos never seen with this backbone), then the L-BFGS linear head (``core.train.head``);
* **full** (minutes): fine-tune the backbone with augmentation (``core.train.finetune``); the
  result is a new backbone version (weights, ONNX, INT8 ONNX in the object store under
  ``backbones/<version>/``, ``core.train.backbones``) that becomes the current backbone, so
  later fast updates start from the fine-tuned embeddings.

Both then: temperature fitted on val and folded into the head (calibrated confidences),
evaluation (``core.train.calibrate``), a head-only ONNX written directly (kilobytes), the
edge's single-file model composed from the cached backbone ONNX and the head (no torch
export), the INT8 model composed from the cached INT8 backbone and the same head, both shipped
artefacts scored again on val photos with ONNX Runtime, a run record (seeds, library versions,
dataset version and manifest hash, code revision, parameters, timings) stored under
``runs/<run id>/`` beside the training log and the confusion-matrix picture, and registration
with lineage and signature (``core.train.package``).  ``rerun`` repeats a run from its record.

This module only orders the steps (``core.train.fit``, ``core.train.package``) over one
``TrainingRun`` (``core.train.state``) and holds what outlives a run: the backbones, the
embedding cache and the ONNX Runtime sessions.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Protocol

import numpy as np

from edge2core.common.objectstore import ObjectStore
from edge2core.common.products import Product
from edge2core.core.curate.datasets import DatasetEntry, DatasetStore
from edge2core.core.deliver.registry import ModelInfo, ModelRegistry
from edge2core.core.train.backbones import IMAGENET_BACKBONE, Backbones
from edge2core.core.train.calibrate import coarse_map
from edge2core.core.train.embedding_cache import EmbeddingCache
from edge2core.core.train.embeddings import OrtEmbedder, preprocess_bytes
from edge2core.core.train.fit import (
    calibrate,
    choose_backbone,
    compare_heads,
    embed_all,
    evaluate,
    fit_fast,
    fit_full,
)
from edge2core.core.train.jobs import InProcessRunner, JobRunner
from edge2core.core.train.onnx_export import ort_session
from edge2core.core.train.package import build_artifacts, register_model, save_run_files, verify_shipped
from edge2core.core.train.records import summary_differences
from edge2core.core.train.state import FAST_DEFAULTS, Say, TrainingResult, TrainingRun, start_run, timed

__all__ = ["FAST_DEFAULTS", "IMAGENET_BACKBONE", "ProductLookup", "Trainer", "TrainingResult"]

PATHS = ("fast", "full")


class ProductLookup(Protocol):
    """What the trainer needs of the catalogue: a product's coarse class, for coarse metrics."""

    def get(self, sku: str) -> Product | None: ...


def _silent(_message: str) -> None:
    pass


class Trainer:
    """Runs training (one at a time) and scores registered models for the gate and drift.

    ``cache`` is the embedding cache (its folder is the ``embedding_cache_dir`` setting): it
    lives outside the object store because it is local, derived and always safe to delete."""

    def __init__(
        self,
        datasets: DatasetStore,
        store: ObjectStore,
        registry: ModelRegistry,
        *,
        cache: EmbeddingCache,
        threads: int = 0,
        catalogue: ProductLookup | None = None,
        runner: JobRunner | None = None,
    ) -> None:
        """``runner``: where fine-tuning and embedding jobs run (``core.train.jobs``; default:
        in this process)."""
        self._datasets = datasets
        self._store = store
        self._registry = registry
        self._threads = threads
        self._catalogue = catalogue
        self.backbones = Backbones(store, threads)
        self.cache = cache
        self._embedders: dict[str, OrtEmbedder] = {}
        self._heads: dict[str, Any] = {}  # head ONNX sha256 -> ONNX Runtime session
        self._lock = threading.Lock()  # one training run at a time
        self.runner: JobRunner = runner or InProcessRunner(store, self.embedder)

    # ------------------------------------------------------------------ embeddings

    def embedder(self, backbone: str) -> OrtEmbedder:
        """An ONNX Runtime session on the backbone (at most two kept: one per backbone in use)."""
        if backbone not in self._embedders:
            if len(self._embedders) >= 2:
                self._embedders.clear()
            self._embedders[backbone] = OrtEmbedder(self.backbones.onnx(backbone), threads=self._threads)
        return self._embedders[backbone]

    def embed_entries(self, entries: list[DatasetEntry], backbone: str,
                      progress: Say | None = None) -> tuple[np.ndarray, int]:
        """Embeddings of these photos with ``backbone``, computing only those not cached."""
        by_id = {e.sha256: e for e in entries}

        def compute(missing: list[str]) -> np.ndarray:
            if progress:
                progress(f"embedding {len(missing)} photos with {backbone}")
            return self.runner.embed([by_id[i].key for i in missing], backbone, self.backbones)

        return self.cache.get_or_compute(backbone, [e.sha256 for e in entries], compute)

    def _coarse_map(self, classes: list[str]) -> dict[str, str] | None:
        if self._catalogue is None:
            return None
        products = {sku: self._catalogue.get(sku) for sku in classes}
        return coarse_map(classes, {sku: p.coarse for sku, p in products.items() if p is not None})

    def _catalogue_images(self, classes: list[str]) -> list[tuple[str, int]]:
        """Each trained product's catalogue image (key, class index): one more, clean view of
        the product for the full path (docs/models.md, the catalogue lever)."""
        if self._catalogue is None:
            return []
        products = [(self._catalogue.get(sku), i) for i, sku in enumerate(classes)]
        return [(p.image_key, i) for p, i in products if p is not None and p.image_key]

    # ------------------------------------------------------------------ the run

    def train(
        self,
        dataset_version: int,
        *,
        seed: int = 0,
        path: str = "fast",
        params: dict[str, Any] | None = None,
        progress: Say | None = None,
        register: bool = True,
        promote: bool = True,
        show_progress: bool | None = None,
    ) -> TrainingResult:
        """Train on a dataset version and (``register``) register the model, promoting it
        through the gate when ``promote``.  ``show_progress``: a progress bar on stderr
        while fine-tuning (default: when stderr is a terminal)."""
        if path not in PATHS:
            raise ValueError(f"unknown training path {path!r}: 'fast' or 'full'")
        with self._lock:
            started = time.perf_counter()
            run = start_run(
                self._datasets.get(dataset_version), self._datasets.entries(dataset_version),
                path=path, seed=seed, params=dict(params or {}), threads=self._threads,
                say=progress or _silent, started=started,
                show_progress=sys.stderr.isatty() if show_progress is None else show_progress,
            )
            self._fit(run)
            self._ship(run, register=register, promote=promote)
            if path == "full" and register:
                self.backbones.set_current(run.backbone)
            run.timings["total"] = time.perf_counter() - run.started
            return TrainingResult(model=run.model, timings_s=run.timings, record=run.record, metrics=run.metrics)

    def _fit(self, run: TrainingRun) -> None:
        """Backbone and head: the two paths differ only here."""
        if run.path == "full":
            run.catalogue_images = self._catalogue_images(run.classes)
            fit_full(run, self.runner, self.backbones, self.embed_entries, self._threads)
            embed_all(run, self.embed_entries)
            compare_heads(run)
        else:
            choose_backbone(run, self.backbones)
            embed_all(run, self.embed_entries)
            fit_fast(run)

    def _ship(self, run: TrainingRun, *, register: bool, promote: bool) -> None:
        """The common ending: calibrate, evaluate, package, check, record, register."""
        coarse = self._coarse_map(run.classes)
        with timed(run, "evaluate"):
            evaluate(run, coarse, calibrate(run))
        build_artifacts(run, self.backbones, self._store)
        with timed(run, "verify_shipped"):
            verify_shipped(run, self._store, self._threads)
        with timed(run, "register"):
            save_run_files(run, self._store)
            if register:
                register_model(run, self._registry, self.backbones, promote=promote)

    # ------------------------------------------------------------------ records

    def record(self, run_id: str) -> dict[str, Any]:
        """A run's record, as written at the end of the run."""
        return dict(json.loads(self._store.get(f"runs/{run_id}/record.json")))

    def rerun(self, record: dict[str, Any] | str, *, register: bool = False) -> dict[str, Any]:
        """Repeat a run from its record (same dataset version, seed, path, parameters and
        backbone) and compare the metrics.  Returns ``{"same": bool, "original", "rerun",
        "differences"}``; the new model is registered as a candidate only if ``register``."""
        rec = self.record(record) if isinstance(record, str) else record
        params = dict(rec["params"])
        path = params.pop("path")
        seed = params.pop("seed")
        result = self.train(rec["dataset_version"], seed=seed, path=path, params=params,
                            register=register, promote=False)
        if result.record["dataset_manifest_sha256"] != rec["dataset_manifest_sha256"]:
            raise RuntimeError("the dataset's manifest changed since the original run")
        original, again = rec.get("metrics_summary", {}), result.record["metrics_summary"]
        diffs = summary_differences(original, again)
        return {"same": not diffs, "original": original, "rerun": again, "differences": diffs,
                "run_id": result.record["run_id"],
                "model": result.model.version if result.model else None}

    # ------------------------------------------------------------------ scoring (gate, drift)

    def score_model(self, model: ModelInfo, entries: list[DatasetEntry]) -> np.ndarray:
        """Probabilities (N, C) of a registered model's shipped artefact on dataset photos:
        through the embedding cache + the head ONNX when the model has both (numerically the
        composed model), else the full ONNX on the photos."""
        backbone = model.lineage.get("backbone")
        if "head" in model.artifacts and backbone and self._store.exists(f"backbones/{backbone}/backbone.onnx"):
            features, _ = self.embed_entries(entries, backbone)
            return np.asarray(self._head_session(model).run(None, {"embedding": features})[0])
        session = ort_session(self._store.get(model.artifact_key), self._threads)
        out = []
        for i in range(0, len(entries), 32):
            x = preprocess_bytes([self._store.get(e.key) for e in entries[i : i + 32]])
            out.append(session.run(None, {"image": x})[0])
        return np.concatenate(out) if out else np.zeros((0, len(model.classes)), dtype=np.float32)

    def _head_session(self, model: ModelInfo) -> Any:
        """The head's ONNX Runtime session, kept by content (the gate scores the same heads often)."""
        head = model.artifacts["head"]
        if head.sha256 not in self._heads:
            self._heads[head.sha256] = ort_session(self._store.get(head.key), 1)
        return self._heads[head.sha256]
