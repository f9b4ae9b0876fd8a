"""The trainer, built the first time something needs it.

Building a :class:`~edge2core.core.train.run.Trainer` imports PyTorch (about 1 s and 200 MB
on our 2-core machines, measured with ``python -X importtime`` and the core's RSS), which a
core that only receives photos never needs.  The core's wiring holds this handle instead: the
API, the learning loop, the gate and drift call through it, and the real trainer is made on
the first call (once, under a lock).  The embedding cache is built up front, without PyTorch,
because erasing a photo purges its vectors whether or not a run ever happened.

Every run is in the audit log: ``training.started``, then ``training.finished`` or
``training.failed`` under the same ``run-<id>`` subject. A core killed in the middle of a run
leaves a start with no end; at the next start ``mark_interrupted`` records
``training.interrupted`` for it (the run registered nothing: a model is registered only at a
run's very end), and whoever asked may ask again (the learning loop does by itself: its
trigger still holds).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edge2core.core.audit import MAX_LIMIT, AuditLog
from edge2core.core.train.embedding_cache import EmbeddingCache

if TYPE_CHECKING:
    from edge2core.core.curate.datasets import DatasetEntry
    from edge2core.core.deliver.registry import ModelInfo
    from edge2core.core.train.run import Trainer
    from edge2core.core.train.state import TrainingResult

__all__ = ["TrainerOnDemand"]


class TrainerOnDemand:
    """Forwards ``train``, ``rerun`` and ``score_model`` to a trainer that ``build(cache)``
    makes on first use; ``cache`` is the shared embedding cache, usable at once."""

    def __init__(self, build: Callable[[EmbeddingCache], Trainer], cache: EmbeddingCache,
                 audit: AuditLog | None = None) -> None:
        self._build = build
        self.cache = cache
        self._audit = audit
        self._trainer: Trainer | None = None
        self._lock = threading.Lock()

    def get(self) -> Trainer:
        """The trainer, built now if this is the first use."""
        with self._lock:
            if self._trainer is None:
                self._trainer = self._build(self.cache)
            return self._trainer

    def train(self, dataset_version: int, **options: Any) -> TrainingResult:
        """:meth:`Trainer.train` (same arguments, same errors), with its start and end in the
        audit log."""
        subject = f"run-{uuid.uuid4().hex[:16]}"
        self._record("training.started", subject, dataset_version=dataset_version,
                     path=options.get("path", "fast"), seed=options.get("seed", 0))
        try:
            result = self.get().train(dataset_version, **options)
        except BaseException as exc:
            self._record("training.failed", subject, error=type(exc).__name__, detail=str(exc)[:300])
            raise
        self._record("training.finished", subject, run_id=result.record.get("run_id"),
                     model=result.model.version if result.model else None)
        return result

    def mark_interrupted(self) -> list[str]:
        """At start: record ``training.interrupted`` for every run that started and never ended
        (its process died); returns their subjects."""
        if self._audit is None:
            return []
        events = self._audit.query("training.", limit=MAX_LIMIT)
        ended = {e.subject for e in events if e.kind != "training.started"}
        lost = sorted({e.subject for e in events if e.kind == "training.started"} - ended)
        for subject in lost:
            self._audit.record("training.interrupted", subject,
                               reason="the core stopped during the run; it registered nothing")
        return lost

    def _record(self, kind: str, subject: str, **detail: Any) -> None:
        if self._audit is not None:
            self._audit.record(kind, subject, **detail)

    def rerun(self, record: dict[str, Any] | str, *, register: bool = False) -> dict[str, Any]:
        """:meth:`Trainer.rerun`."""
        return self.get().rerun(record, register=register)

    def score_model(self, model: ModelInfo, entries: list[DatasetEntry]) -> np.ndarray:
        """:meth:`Trainer.score_model`: probabilities (N, C)."""
        return self.get().score_model(model, entries)
