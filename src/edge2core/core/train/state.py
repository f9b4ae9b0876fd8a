"""The state of one training run, handed from step to step, and the timing helper.

A run is a short pipeline of named steps (``core.train.run``); each reads what the earlier
ones produced from one ``TrainingRun`` and adds its own (backbone, features, head, metrics,
artefacts, model), so no step needs a long argument list and the record, the log and the
timings have a single home.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge2core.core.curate.datasets import DatasetEntry, DatasetInfo
from edge2core.core.deliver.registry import ModelInfo
from edge2core.core.train.backbone import EMBEDDING_DIM
from edge2core.core.train.head import HeadModel
from edge2core.core.train.records import new_record

__all__ = ["FAST_DEFAULTS", "Artifacts", "Say", "TrainingResult", "TrainingRun", "start_run", "timed"]

Say = Callable[[str], None]

# Parameters of the ending both paths share; a run's ``params`` override them.
FAST_DEFAULTS: dict[str, Any] = {
    "head_epochs": 100, "head_weight_decay": 1e-3, "calibrate": True, "int8": True,
    "int8_calibration": 96, "shipped_eval_max": 512, "target_precision": 0.95,
    # An INT8 twin that loses more top-1 than this against fp32 on the same val photos is not
    # shipped: that version runs fp32 (recorded in metrics["shipped"]["int8"]["refused"]).
    # On a few dozen val photos one photo is several points: like the promotion gate, a drop
    # counts only when at least this many photos (net) went wrong.
    "int8_max_drop": 0.01, "int8_min_photo_drop": 2,
}


@dataclass
class TrainingResult:
    """What a caller gets back: the registered model (None when not registered), the
    timings (seconds, with ``total``), the run record and the metrics."""

    model: ModelInfo | None
    timings_s: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifacts:
    """The files a run ships: the head alone, the composed fp32 model, and its INT8 twin."""

    head: bytes
    full: bytes
    int8: bytes | None = None


@dataclass
class TrainingRun:
    """Everything one run knows, filled in step by step.

    ``entries`` are sorted by photo id and ``labels``, ``is_val`` and ``train_mask`` are
    aligned with them (and with ``features`` once embedded), so a run is repeatable from
    its record whatever order the dataset returned the photos in."""

    run_id: str
    path: str
    seed: int
    dataset_version: int
    opts: dict[str, Any]
    entries: list[DatasetEntry]
    classes: list[str]
    labels: np.ndarray
    is_val: np.ndarray
    train_mask: np.ndarray
    record: dict[str, Any]
    say: Say
    show_progress: bool = False
    started: float = field(default_factory=time.perf_counter)
    params_used: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    backbone: str = ""
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), dtype=np.float32))
    head: HeadModel | None = None
    alternatives: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: Artifacts | None = None
    model: ModelInfo | None = None
    # (object-store key, class index) of each trained product's catalogue image, if it has one
    catalogue_images: list[tuple[str, int]] = field(default_factory=list)

    @property
    def train_entries(self) -> list[DatasetEntry]:
        return [e for e, m in zip(self.entries, self.train_mask, strict=True) if m]

    @property
    def val_entries(self) -> list[DatasetEntry]:
        return [e for e, m in zip(self.entries, self.is_val, strict=True) if m]

    @property
    def head_options(self) -> dict[str, Any]:
        """``train_head`` keywords from the run's parameters (the same for every head fit)."""
        return {"seed": self.seed, "epochs": int(self.opts["head_epochs"]),
                "weight_decay": float(self.opts["head_weight_decay"])}

    def fitted_head(self) -> HeadModel:
        """The head, once a fitting step has set it (a step out of order is a bug)."""
        if self.head is None:
            raise RuntimeError(f"run {self.run_id}: no head fitted yet")
        return self.head

    def shipped(self) -> Artifacts:
        """The artefacts, once ``build_artifacts`` has made them."""
        if self.artifacts is None:
            raise RuntimeError(f"run {self.run_id}: no artefacts built yet")
        return self.artifacts


@contextmanager
def timed(run: TrainingRun, stage: str) -> Iterator[None]:
    """Time a stage into ``run.timings[stage]`` (seconds); a stage that raises records
    nothing, as the run fails anyway."""
    started = time.perf_counter()
    yield
    run.timings[stage] = time.perf_counter() - started


def start_run(info: DatasetInfo, entries: Iterable[DatasetEntry], *, path: str, seed: int,
              params: dict[str, Any], threads: int, say: Say, show_progress: bool,
              started: float) -> TrainingRun:
    """A new run on a dataset version: photos in a stable order, labels, the split.

    With no train photos at all, every photo trains (val then overlaps train), so a tiny
    dataset still yields a model."""
    ordered = sorted(entries, key=lambda e: e.sha256)
    classes = sorted({e.sku for e in ordered})
    if len(classes) < 2:
        raise ValueError(f"dataset {info.version} has {len(classes)} class; need >= 2")
    index = {sku: i for i, sku in enumerate(classes)}
    is_val = np.array([e.split == "val" for e in ordered])
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return TrainingRun(
        run_id=run_id, path=path, seed=seed, dataset_version=info.version,
        opts={**FAST_DEFAULTS, **params}, entries=ordered, classes=classes,
        labels=np.array([index[e.sku] for e in ordered], dtype=np.int64), is_val=is_val,
        train_mask=~is_val if (~is_val).any() else np.ones_like(is_val),
        record=new_record(run_id, path, info.version, info.manifest_sha256, seed, threads),
        say=say, show_progress=show_progress, started=started,
    )
