"""What runs on a Ray cluster's workers: one rank of the full path's fine-tuning (Ray Train,
PyTorch DistributedDataParallel) and one slice of an embedding job.

The recipe is ``core.train.finetune``'s, step for step (its model, optimiser, schedule,
augmentation, evaluation and best-epoch rule are reused, not copied); what DDP changes:

* each step's batch (``batch_size`` photos, as in one process) is split over the ranks, and
  DDP averages the gradients, so the schedule and the effective batch are the same;
* every rank draws the epoch's order from a generator seeded by (seed, epoch), so all agree
  on it without talking; augmentation and dropout are seeded by (seed, epoch, rank);
* before judging an epoch, BatchNorm's running statistics are taken from rank 0 (DDP keeps
  the weights equal, not those); each rank scores a share of the val photos and the counts
  are summed, so every rank takes the same early-stopping decision;
* after each epoch rank 0 saves a checkpoint (weights, optimiser, schedule, best epoch, log);
  a worker that dies makes Ray Train restart the group (``FailureConfig``), which resumes
  from the last checkpoint instead of from scratch.

Workers read photos from the object store themselves (``jobs.StoreSpec``).  The device is
the worker's GPU when Ray gave it one, else its CPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edge2core.core.train.augment import crop_size
from edge2core.core.train.backbones import Backbones
from edge2core.core.train.finetune import (
    _Best,
    _classifier_head,
    _Data,
    _epoch_order,
    _evaluate,
    _Loop,
    _new_model,
    _restore,
)
from edge2core.core.train.jobs import FineTuneJob, StoreSpec, stored_job_photos

__all__ = ["embed_slice", "train_worker"]

STATE_FILE = "state.pt"
FINAL_FILE = "final.pt"


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: ``config = {"job": FineTuneJob, "store": StoreSpec}``."""
    import ray.train
    import ray.train.torch

    job: FineTuneJob = config["job"]
    cfg = job.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if job.threads:
        torch.set_num_threads(job.threads)
    store = config["store"].open()
    train, val = stored_job_photos(store, job)
    data = _Data.of(train, np.array(job.train_labels), val, np.array(job.val_labels))  # writable copies
    torch.manual_seed(cfg.seed)  # the classifier starts the same on every rank
    model = _new_model(Backbones(store).torch(job.base), list(job.classes), cfg, job.init_head)
    # The backbone's ImageNet classifier is not in the forward pass: left trainable, DDP would
    # wait for its gradients forever (in one process AdamW just skips it, as here).
    model.backbone.net._fc.requires_grad_(False)
    loop = _Loop.build(model, cfg, device, torch.Generator(), len(data.train))
    state = _State(best=_Best(cfg))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state.load(Path(folder) / STATE_FILE, loop)
    ddp = nn.parallel.DistributedDataParallel(loop.model, device_ids=[device.index] if device.type == "cuda" else None)
    # the same optimiser, schedule and average; DDP wraps the _Net and forwards its calls
    stepper = dataclasses.replace(loop, model=ddp)  # type: ignore[arg-type]
    started = time.perf_counter()
    with loop.prefetcher:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if state.stopped:  # resumed after the epoch that stopped early
                break
            state.stopped = _epoch(loop, stepper, data, state, epoch, rank, world, started)
            _report(state, loop, rank, final=False)
    _report(state, loop, rank, final=True, classes=job.classes, device=str(device), world=world)


@dataclasses.dataclass
class _State:
    """What a checkpoint holds besides the weights: the last finished epoch, the best epoch,
    the log, and the epochs this job resumed at (after a worker died)."""

    best: _Best
    epoch: int = 0
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resumed: list[int] = dataclasses.field(default_factory=list)
    stopped: bool = False

    def save(self, path: Path, loop: _Loop) -> None:
        torch.save({
            "model": loop.model.state_dict(), "opt": loop.opt.state_dict(), "sched": loop.sched.state_dict(),
            "ema": loop.ema.state_dict() if loop.ema is not None else None,
            "best": {"score": list(self.best.score), "state": self.best.state, "epoch": self.best.epoch,
                     "stale": self.best.stale},
            "epoch": self.epoch, "log": self.log, "resumed": self.resumed, "stopped": self.stopped,
        }, path)

    def load(self, path: Path, loop: _Loop) -> None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        loop.model.load_state_dict(saved["model"])
        loop.opt.load_state_dict(saved["opt"])
        loop.sched.load_state_dict(saved["sched"])
        if loop.ema is not None and saved["ema"] is not None:
            loop.ema.load_state_dict(saved["ema"])
        best = saved["best"]
        self.best.score, self.best.state = (best["score"][0], best["score"][1]), best["state"]
        self.best.epoch, self.best.stale = best["epoch"], best["stale"]
        self.epoch, self.log, self.stopped = saved["epoch"], saved["log"], saved["stopped"]
        self.resumed = [*saved["resumed"], self.epoch]


def _epoch(loop: _Loop, stepper: _Loop, data: _Data, state: _State, epoch: int, rank: int, world: int,
           started: float) -> bool:
    """Train one epoch on this rank's share, judge it with every rank; True to stop."""
    cfg = loop.cfg
    epoch_started = time.perf_counter()
    torch.manual_seed(_seed(cfg.seed, epoch, rank))  # dropout
    stepper.gen.manual_seed(_seed(cfg.seed, epoch, rank))  # augmentation
    order = _epoch_order(data.train_labels, cfg.balanced, torch.Generator().manual_seed(_seed(cfg.seed, epoch)))
    loop.model.train()
    losses = []
    shares = [s[rank::world] for s in _steps(order, cfg.batch_size, loop.steps_per_epoch, world)]
    size = crop_size(cfg.train_size, epoch, cfg.start_size, cfg.ramp_epochs)
    for idx, photos in zip(shares, loop.prefetcher.batches(data.train, [i.tolist() for i in shares]), strict=True):
        losses.append(stepper._step(data, idx, photos, size))
    record = _judge(loop, data, epoch, losses, world, epoch_started)
    state.log.append(record)
    state.epoch = epoch
    stop = state.best.update(record, epoch, loop.judged)
    if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
        stop = True
    flag = torch.tensor([1.0 if stop else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one rank's clock must not split the group
    return bool(flag.item())


def _steps(order: torch.Tensor, batch: int, steps: int, world: int) -> list[torch.Tensor]:
    """The epoch's global batches; one too small to give every rank a photo is left out on
    every rank alike (DDP needs the same number of steps everywhere)."""
    batches = [order[s * batch : (s + 1) * batch] for s in range(steps)]
    return [b for b in batches if len(b) >= max(2, world)]


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = value * 1_000_003 + part
    return value % (2**63)


def _judge(loop: _Loop, data: _Data, epoch: int, losses: list[float], world: int,
           started: float) -> dict[str, Any]:
    """The epoch's log record, the same on every rank: val scored in shares and summed."""
    for buffer in loop.judged.buffers():
        dist.broadcast(buffer, 0)  # BatchNorm statistics: rank 0's, so all ranks judge one model
    rank = dist.get_rank()
    ids = list(range(rank, len(data.val), world))
    sums = torch.zeros(4, dtype=torch.float64)
    if ids:
        top1, loss, _ = _evaluate(loop.judged, _Subset(data.val, ids), data.val_labels[ids], loop.device,
                                  loop.prefetcher, flip=loop.cfg.tta_flip)
        sums[0], sums[1], sums[2] = top1 * len(ids), loss * len(ids), len(ids)
    sums[3] = float(np.mean(losses)) if losses else 0.0
    dist.all_reduce(sums)
    n = float(sums[2])
    return {
        "epoch": epoch,
        "train_loss": float(sums[3]) / world if losses else float("nan"),
        "val_loss": float(sums[1]) / n if n else float("nan"),
        "val_top1": float(sums[0]) / n if n else float("nan"),
        "lr": float(loop.opt.param_groups[0]["lr"]),
        "crop_px": crop_size(loop.cfg.train_size, epoch, loop.cfg.start_size, loop.cfg.ramp_epochs),
        "seconds": round(time.perf_counter() - started, 2),
        "workers": world,
    }


class _Subset(Sequence[Any]):
    """Some items of a sequence, read on access."""

    def __init__(self, items: Sequence[Any], ids: list[int]) -> None:
        self._items, self._ids = items, ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._items[self._ids[i]] for i in range(*index.indices(len(self)))]
        return self._items[self._ids[index]]


def _report(state: _State, loop: _Loop, rank: int, *, final: bool, classes: Sequence[str] = (), device: str = "",
            world: int = 1) -> None:
    """Tell Ray Train the epoch is done; rank 0 attaches the checkpoint (or, at the end, the
    result: the best epoch's backbone and classifier)."""
    import ray.train

    metrics = {"epoch": state.epoch, "final": final}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="e2c-ckpt-") as folder:
        if final:
            _save_final(Path(folder) / FINAL_FILE, state, loop, classes, device, world)
        else:
            state.save(Path(folder) / STATE_FILE, loop)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _save_final(path: Path, state: _State, loop: _Loop, classes: Sequence[str], device: str, world: int) -> None:
    cfg = loop.cfg
    backbone = _restore(loop.model, state.best)
    head = _classifier_head(loop.model, list(classes), cfg, state.best.epoch)
    torch.save({
        "backbone": backbone.state_dict(), "head_weight": torch.from_numpy(head.weight),
        "head_bias": torch.from_numpy(head.bias), "best_epoch": state.best.epoch, "log": state.log,
        "resumed": state.resumed, "device": device, "workers": world,
        "seconds": sum(float(r["seconds"]) for r in state.log),
    }, path)


def embed_slice(store: StoreSpec, onnx_key: str, keys: list[str], threads: int = 1) -> np.ndarray:
    """Embeddings (N, 1280) float32 of the photos at ``keys``, read by this worker from the
    store, with the backbone ONNX at ``onnx_key`` (kept per worker process)."""
    from edge2core.core.train.embeddings import OrtEmbedder

    opened = store.open()
    embedder = _embedders.get(onnx_key)
    if embedder is None:
        _embedders.clear()  # one backbone at a time: a worker's memory is not the core's
        embedder = _embedders[onnx_key] = OrtEmbedder(opened.get(onnx_key), threads=threads)
    if not keys:
        return np.zeros((0, 1280), dtype=np.float32)
    return embedder.embed_bytes([opened.get(k) for k in keys])


_embedders: dict[str, Any] = {}  # onnx key -> this worker process's embedder
