"""Where training and embedding jobs run: in the core's process, or on a Ray cluster.

The trainer (``core.train.run``) orders a run's steps; the two heavy ones, fine-tuning the
backbone (the full path) and embedding many photos, go through a :class:`JobRunner`:

* :class:`InProcessRunner` (the default): in the core's process, as before;
* ``RayRunner`` (``core.train.ray_runner``, only imported when ``training_cluster`` is set, so
  a core installed without the ``ray`` extra never imports Ray): fine-tuning with Ray Train
  running PyTorch's DistributedDataParallel over the cluster's workers, and the embedding
  spread over them.

A job names its photos by object-store key, never by content: every worker opens the object
store itself (:class:`StoreSpec`) and reads the photos it needs, so nothing big goes through
the driver.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge2core.common.objectstore import ObjectStore, open_object_store

if TYPE_CHECKING:
    from edge2core.config import CoreSettings
    from edge2core.core.train.backbones import Backbones
    from edge2core.core.train.embeddings import OrtEmbedder
    from edge2core.core.train.finetune import FineTuneConfig, FineTuneResult
    from edge2core.core.train.head import HeadModel

__all__ = ["FineTuneJob", "InProcessRunner", "JobRunner", "OnEpoch", "StoreSpec", "store_spec"]

OnEpoch = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class StoreSpec:
    """How a worker opens the core's object store: a folder (which every worker must see at
    the same path: one machine, or a shared volume) or ``s3://bucket/prefix``.  Keys left
    empty mean boto3's own chain on the worker (environment, instance or pod identity)."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    def open(self) -> ObjectStore:
        """The store, as the core opens it (workers only read: staging is a local temp folder)."""
        staging = Path(tempfile.gettempdir()) / "e2c-worker-staging"
        return open_object_store(self.url, staging_dir=staging, endpoint_url=self.endpoint_url,
                                 region=self.region, access_key_id=self.access_key_id,
                                 secret_access_key=self.secret_access_key)


def store_spec(settings: CoreSettings) -> StoreSpec:
    """The core's object store as workers reach it (a local folder as an absolute path)."""
    url = settings.object_store_url or str((settings.data_dir / "objects").resolve())
    if "://" not in url:
        url = str(Path(url).resolve())
    return StoreSpec(url, settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id,
                     settings.s3_secret_access_key)


@dataclass(frozen=True)
class FineTuneJob:
    """One fine-tuning of the full path: start from backbone version ``base``, train on the
    photos at ``train_keys`` (labels: indices into ``classes``), judge on ``val_keys``.

    ``init_head``: LP-FT's starting classifier (None: random).  ``threads``: torch threads
    per worker (0: the library's default)."""

    base: str
    train_keys: tuple[str, ...]
    train_labels: np.ndarray
    val_keys: tuple[str, ...]
    val_labels: np.ndarray
    classes: tuple[str, ...]
    config: FineTuneConfig
    init_head: HeadModel | None = None
    threads: int = 0
    progress: bool = False


class JobRunner(Protocol):
    """Runs the trainer's heavy jobs somewhere; both methods raise what the job raised
    (``ValueError`` for bad data, ``RuntimeError`` when a cluster gives up on a job)."""

    def finetune(self, job: FineTuneJob, backbones: Backbones, on_epoch: OnEpoch | None = None) -> FineTuneResult:
        """The fine-tuned backbone (frozen, CPU) and classifier; ``on_epoch`` gets each
        epoch's log record (at the end of the job on a cluster)."""
        ...

    def embed(self, keys: Sequence[str], backbone: str, backbones: Backbones) -> np.ndarray:
        """Embeddings (N, 1280) float32 of the photos at ``keys`` with backbone version
        ``backbone``, in the order of ``keys``."""
        ...


class InProcessRunner:
    """Jobs in the core's own process (the default, and the reference the cluster matches).

    ``embedder``: backbone version -> ONNX Runtime embedder (the trainer keeps those)."""

    def __init__(self, store: ObjectStore, embedder: Callable[[str], OrtEmbedder], *, batch: int = 256) -> None:
        self._store = store
        self._embedder = embedder
        self._batch = batch

    def finetune(self, job: FineTuneJob, backbones: Backbones, on_epoch: OnEpoch | None = None) -> FineTuneResult:
        from edge2core.core.train.finetune import finetune

        train, val = stored_job_photos(self._store, job)
        return finetune(backbones.torch(job.base), train, job.train_labels, val, job.val_labels,
                        list(job.classes), job.config, progress=job.progress, on_epoch=on_epoch,
                        init_head=job.init_head)

    def embed(self, keys: Sequence[str], backbone: str, backbones: Backbones) -> np.ndarray:
        # A slice of photos at a time: memory holds one slice's bytes, not the dataset's.
        embedder = self._embedder(backbone)
        chunks = [embedder.embed_bytes([self._store.get(k) for k in keys[i : i + self._batch]])
                  for i in range(0, len(keys), self._batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1280), dtype=np.float32)


def stored_job_photos(store: ObjectStore, job: FineTuneJob) -> tuple[Sequence[Any], Sequence[Any]]:
    """A job's train photos (uint8 tensors, augmented on the fly) and val photos (as the edge
    sees them), read from the store and decoded only when a batch needs them."""
    from edge2core.core.train.embeddings import load_model_image
    from edge2core.core.train.finetune import to_uint8_tensor
    from edge2core.core.train.stored_photos import StoredPhotos

    train = StoredPhotos(store, job.train_keys, lambda data: to_uint8_tensor(load_model_image(data)))
    val = StoredPhotos(store, job.val_keys, load_model_image)
    return train, val
