"""Training runs: dataset version in, registered ONNX model version out.

The fast path: frozen EfficientNet-Lite0 embeddings (cached by photo id) and a linear head,
exported as one ONNX file the edge runs as it is.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.core.datasets import DatasetEntry, DatasetStore
from edge2core.core.registry import ModelInfo, ModelRegistry

log = get_logger(__name__)


@dataclass
class TrainingResult:
    model: ModelInfo
    timings_s: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(
        self,
        datasets: DatasetStore,
        store: ObjectStore,
        registry: ModelRegistry,
        *,
        threads: int = 0,
    ) -> None:
        self._datasets = datasets
        self._store = store
        self._registry = registry
        self._threads = threads
        self._backbone: Any = None
        # Embeddings depend only on the photo and the frozen backbone: compute each once.
        self._embeddings: dict[str, np.ndarray] = {}

    def _load_backbone(self) -> Any:
        if self._backbone is None:
            import torch

            from edge2core.core.backbone import load_backbone

            if self._threads:
                torch.set_num_threads(self._threads)
            self._backbone = load_backbone()
        return self._backbone

    def train(
        self, dataset_version: int, *, seed: int = 0, progress: Callable[[str], None] | None = None
    ) -> TrainingResult:
        from edge2core.core.training import evaluate, train_head

        say = progress or (lambda _msg: None)
        timings: dict[str, float] = {}
        entries = self._datasets.entries(dataset_version)
        classes = sorted({e.sku for e in entries})
        if len(classes) < 2:
            raise ValueError(f"dataset {dataset_version} has {len(classes)} class; need >= 2")
        index = {sku: i for i, sku in enumerate(classes)}

        start = time.perf_counter()
        say(f"embedding {len(entries)} photos")
        features = self._embed(entries)
        timings["embed"] = time.perf_counter() - start

        labels = np.array([index[e.sku] for e in entries], dtype=np.int64)
        is_val = np.array([e.split == "val" for e in entries])
        train_mask = ~is_val if (~is_val).any() else np.ones_like(is_val)

        start = time.perf_counter()
        say("training the head")
        head = train_head(features[train_mask], labels[train_mask], classes, seed=seed)
        timings["train_head"] = time.perf_counter() - start

        metrics: dict[str, Any] = {"train": evaluate(head, features[train_mask], labels[train_mask])}
        if is_val.any():
            metrics["val"] = evaluate(head, features[is_val], labels[is_val])

        start = time.perf_counter()
        say("exporting ONNX")
        artifact = self._export(head)
        timings["export"] = time.perf_counter() - start

        params = {"path": "fast", "seed": seed, "backbone": "efficientnet-lite0-imagenet"}
        model = self._registry.register(
            artifact,
            dataset_version=dataset_version,
            classes=classes,
            metrics=metrics,
            params=params,
        )
        log.info("model registered", version=model.version, metrics=metrics, timings=timings)
        return TrainingResult(model=model, timings_s=timings)

    def _embed(self, entries: list[DatasetEntry]) -> np.ndarray:
        from edge2core.core.training import embed

        missing = [e for e in entries if e.sha256 not in self._embeddings]
        if missing:
            images = [Image.open(io.BytesIO(self._store.get(e.key))) for e in missing]
            vectors = embed(self._load_backbone(), images)
            for entry, vector in zip(missing, vectors, strict=True):
                self._embeddings[entry.sha256] = vector
        return np.stack([self._embeddings[e.sha256] for e in entries])

    def _export(self, head: Any) -> bytes:
        from edge2core.core.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(self._load_backbone(), head, path)
            return path.read_bytes()
