"""Training and embedding jobs on a Ray cluster (``training_cluster = "ray://host:10001"``).

Ray itself is imported only when a cluster is configured (``job_runner``): Ray is the optional
``edge2core[ray]`` extra.  Every node of the cluster needs edge2core with the ``core`` and
``ray`` extras installed (the same versions as the core: Ray Client requires the same Ray and
Python), and must reach the object store: the same folder path (one machine, or a shared
volume) or the same S3 bucket.

* fine-tuning: one small task (no CPU reserved) starts Ray Train's ``TorchTrainer`` inside the
  cluster with ``workers`` ranks (``core.train.ray_worker.train_worker``; GPUs when the
  cluster has one per rank), checkpoints under ``storage`` (a folder every node sees, or
  ``s3://...``), and up to ``max_failures`` restarts of the group when a worker dies; the
  result (17 MB of weights) comes back as that task's return value;
* embedding: the photos' keys in slices, one task per slice (``ray_worker.embed_slice``), the
  vectors gathered in order.
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge2core.core.train.backbones import Backbones
from edge2core.core.train.finetune import FineTuneResult
from edge2core.core.train.head import HeadModel
from edge2core.core.train.jobs import FineTuneJob, JobRunner, OnEpoch, StoreSpec, store_spec

if TYPE_CHECKING:
    from edge2core.config import CoreSettings

__all__ = ["RayRunner", "job_runner"]


class RayRunner:
    """A :class:`~edge2core.core.train.jobs.JobRunner` on the Ray cluster at ``address``
    (``ray://host:port`` through Ray Client, or ``auto`` on a cluster's node).  Connects on
    the first job.  Raises ``RuntimeError`` when the cluster gives a job up (after
    ``max_failures`` restarts)."""

    def __init__(self, address: str, store: StoreSpec, *, workers: int = 2, storage: str,
                 threads: int = 0, max_failures: int = 3, slice_size: int = 128) -> None:
        self.address = address
        self._store = store
        self.workers = workers
        self._storage = storage
        self._threads = threads
        self.max_failures = max_failures
        self._slice = slice_size
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import ray

        with self._lock:
            if not ray.is_initialized():
                ray.init(address=self.address, namespace="edge2core", logging_level=logging.WARNING,
                         log_to_driver=False)
        return ray

    def finetune(self, job: FineTuneJob, backbones: Backbones, on_epoch: OnEpoch | None = None) -> FineTuneResult:
        ray = self._connect()
        if "://" not in self._storage:
            Path(self._storage).mkdir(parents=True, exist_ok=True)
        name = f"finetune-{uuid.uuid4().hex[:12]}"
        task = ray.remote(_fit_on_cluster).options(num_cpus=0, max_retries=0)
        try:
            payload = ray.get(task.remote(job, self._store, self.workers, self._storage, name, self.max_failures))
        except Exception as exc:  # the worker's traceback stays in the cluster's logs
            raise RuntimeError(f"fine-tuning failed on the Ray cluster: {type(exc).__name__}") from exc
        for record in payload["log"]:
            if on_epoch is not None:
                on_epoch(record)
        return _result(payload, job, backbones)

    def embed(self, keys: Sequence[str], backbone: str, backbones: Backbones) -> np.ndarray:
        ray = self._connect()
        from edge2core.core.train.ray_worker import embed_slice

        backbones.onnx(backbone)  # exported once into the store, where the workers read it
        task = ray.remote(embed_slice).options(num_cpus=1, max_retries=3)
        refs = [task.remote(self._store, f"backbones/{backbone}/backbone.onnx", list(keys[i : i + self._slice]),
                            self._threads or 1)
                for i in range(0, len(keys), self._slice)]
        chunks = [np.asarray(c, dtype=np.float32) for c in ray.get(refs)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1280), dtype=np.float32)


def _fit_on_cluster(job: FineTuneJob, store: StoreSpec, workers: int, storage: str, name: str,
                    max_failures: int) -> dict[str, Any]:
    """Runs inside the cluster: Ray Train over ``workers`` ranks; the final checkpoint's
    contents (weights as tensors, the log, where it ran)."""
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from edge2core.core.train.ray_worker import FINAL_FILE, train_worker

    use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    trainer = TorchTrainer(
        train_worker, train_loop_config={"job": job, "store": store},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("the fine-tuning ended without a result")
    with result.checkpoint.as_directory() as folder:
        payload: dict[str, Any] = torch.load(Path(folder) / FINAL_FILE, map_location="cpu", weights_only=True)
    return payload


def _result(payload: dict[str, Any], job: FineTuneJob, backbones: Backbones) -> FineTuneResult:
    """The cluster's result as the in-process path returns it (frozen CPU backbone, head)."""
    backbone = copy.deepcopy(backbones.torch(job.base))
    backbone.load_state_dict(payload["backbone"])
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    info = {"method": "finetune", **job.config.to_dict(), "best_epoch": payload["best_epoch"],
            "workers": payload["workers"], "resumed_at_epochs": payload["resumed"]}
    head = HeadModel(weight=payload["head_weight"].numpy().copy(), bias=payload["head_bias"].numpy().copy(),
                     classes=list(job.classes), info=info)
    return FineTuneResult(backbone=backbone, head=head, log=list(payload["log"]), best_epoch=payload["best_epoch"],
                          seconds=float(payload["seconds"]),
                          device=f"ray:{payload['workers']}x{payload['device'].split(':')[0]}")


def job_runner(settings: CoreSettings) -> JobRunner | None:
    """The runner ``training_cluster`` asks for; None (the trainer's in-process default) when
    it is unset.  Importing this module does not import Ray; only a configured cluster does."""
    if not settings.training_cluster:
        return None
    storage = settings.training_storage or str((settings.data_dir / "ray-train").resolve())
    return RayRunner(settings.training_cluster, store_spec(settings), workers=settings.training_workers,
                     storage=storage, threads=settings.training_threads)
