"""The full path: fine-tune EfficientNet-Lite0 end to end on the dataset's train split.

* augmentation with torch ops on uint8 tensors (no torchvision): random resized crop (scale
  ``min_scale``..1, aspect 3/4..4/3, bilinear with antialias; optionally growing over the first
  epochs, ``start_size``), horizontal flip, mild colour jitter, then the edge's ``(x - 127) / 128``;
* validation photos go through ``common.preprocess`` exactly as at the edge;
* defaults chosen on the grocery val split with the levers of docs/models.md (GPU: one run
  each, same seed, bench/levers.json; then on 2 cores): 8 epochs of batches of 16 at peak lr
  2e-3, crops from 35 % of the photo, each product's catalogue image mixed in, an exponential
  moving average of the weights judged and kept (val top-1 0.863 in 17 minutes on 2 cores);
* AdamW and a one-cycle or cosine schedule (``core.train.optimiser``), label smoothing, dropout
  before the linear classifier; the best epoch on val top-1 (ties broken by val loss) is
  restored; early stopping only when ``min_epochs`` asks for it (the schedule runs to its end);
* the same code on CPU and, when ``torch.cuda.is_available()``, on the GPU (bf16 autocast);
* a rich progress bar (stderr) and a training log: one record per epoch (train loss, val
  loss, val top-1, learning rate, seconds).

The result is a frozen ``PooledFeatures`` backbone plus a ``HeadModel`` made from the
classifier, i.e. the same two pieces the fast path exports.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from edge2core.common.preprocess import IMAGE_SIZE, preprocess_batch
from edge2core.core.train.augment import augment_batch, crop_size
from edge2core.core.train.backbone import EMBEDDING_DIM, PooledFeatures
from edge2core.core.train.head import HeadModel
from edge2core.core.train.optimiser import SCHEDULES, adamw, lr_scheduler
from edge2core.core.train.stored_photos import Mapped, Prefetcher

__all__ = ["FineTuneConfig", "FineTuneResult", "augment_batch", "finetune", "pick_device"]


@dataclass
class FineTuneConfig:
    """The full path's recipe; defaults chosen on the grocery val split (module docstring)."""

    epochs: int = 8  # on 2 cores: 17 minutes on the grocery photos, val top-1 0.863 (docs/models.md)
    batch_size: int = 16  # twice the steps of 32, and on 2 cores 20-25 % less time per photo
    lr: float = 2e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    schedule: str = "onecycle"  # or "cosine"
    pct_start: float = 0.2
    patience: int = 3
    min_epochs: int | None = None  # no early stop before this (default: every epoch, see _Best)
    min_scale: float = 0.35  # against the late-epoch overfitting of smaller batches (0.6: 0.846)
    jitter: float = 0.2
    dropout: float = 0.2
    seed: int = 0
    train_size: int = IMAGE_SIZE  # crops are resized to this; val/edge always use 224
    channels_last: bool = True  # memory format for the convolutions (CPU and GPU)
    init: str = "random"  # or "linear_probe" (LP-FT): how the classifier starts
    max_seconds: float | None = None  # stop after the epoch that crosses it (safety net)
    ema_decay: float = 0.995  # > 0: judge and keep an exponential moving average of the weights (per step)
    balanced: bool = False  # each epoch draws photos class-balanced (with replacement) instead of a shuffle
    tta_flip: bool = False  # judge on val as the mean of the photo's and its mirror's logits
    catalogue_copies: int = 5  # each product's catalogue image joins its train photos this often
    freeze_blocks: int = 0  # > 0: the stem and this many first MBConv blocks keep ImageNet's weights (speed)
    start_size: int | None = None  # progressive resizing: crops grow from this to train_size ...
    ramp_epochs: int = 0  # ... over these first epochs (augment.crop_size)
    head_lr_mult: float = 1.0  # the new classifier's peak lr is this times ``lr`` (the backbone's)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FineTuneConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """ValueError (TypeError: a value of the wrong type) naming a setting that would fail later."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; one of {', '.join(SCHEDULES)}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0, not {self.head_lr_mult}")
        crop_size(self.train_size, 1, self.start_size, self.ramp_epochs)


@dataclass
class FineTuneResult:
    """The fine-tuned backbone (frozen, CPU), its classifier as a head, and the epoch log."""

    backbone: PooledFeatures
    head: HeadModel
    log: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    device: str = "cpu"


class _Net(nn.Module):
    def __init__(self, backbone: PooledFeatures, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(EMBEDDING_DIM, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else to_uint8_tensor(image)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _evaluate(
    model: nn.Module, images: Sequence[Image.Image], y: torch.Tensor, device: torch.device,
    prefetcher: Prefetcher, batch: int = 32, flip: bool = False,
) -> tuple[float, float, np.ndarray]:
    """Top-1, loss and probabilities on photos preprocessed as at the edge, a batch at a time
    (decoded as they are needed: the val split is never all in memory)."""
    model.eval()
    logits = []
    batches = [range(i, min(i + batch, len(images))) for i in range(0, len(images), batch)]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for photos in prefetcher.batches(images, batches):
            xb = torch.from_numpy(preprocess_batch(photos)).to(device).contiguous(memory_format=torch.channels_last)
            z = model(xb).float()
            logits.append(((z + model(xb.flip(-1)).float()) / 2 if flip else z).cpu())
    z = torch.cat(logits) if logits else torch.zeros(0, 1)
    loss = float(F.cross_entropy(z, y)) if len(y) else float("nan")
    top1 = float((z.argmax(1) == y).float().mean()) if len(y) else float("nan")
    return top1, loss, torch.softmax(z, 1).numpy()


def finetune(
    backbone: PooledFeatures,
    train_images: Sequence[Image.Image | torch.Tensor],
    train_labels: np.ndarray,
    val_images: Sequence[Image.Image],
    val_labels: np.ndarray,
    classes: list[str],
    config: FineTuneConfig | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | None = None,
    init_head: HeadModel | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of ``backbone`` (the argument is left untouched).

    ``init_head``: start the classifier from a linear probe on the frozen embeddings
    (LP-FT, Kumar et al. 2022: the backbone is not wrecked by a random head's gradients in the
    first steps); otherwise the classifier starts at random.

    Seeded: the global torch RNG (classifier init, dropout) and one generator for the order
    and the augmentation, drawn in the same sequence every run."""
    cfg = config or FineTuneConfig()
    device = device or pick_device()
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = _Data.of(train_images, train_labels, val_images, val_labels)
    loop = _Loop.build(_new_model(backbone, classes, cfg, init_head), cfg, device, gen, len(data.train))
    log: list[dict[str, Any]] = []
    best = _Best(cfg)
    with _progress_bar(progress) as bar, loop.prefetcher:
        task = bar.add_task("fine-tuning", total=loop.steps_per_epoch * cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            losses = loop.train_epoch(data, lambda text: bar.update(task, advance=1, description=text), epoch)
            record = _epoch_record(loop, data, epoch, losses, epoch_started)
            log.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if best.update(record, epoch, loop.judged):
                break
            if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
                break
    return FineTuneResult(
        backbone=_restore(loop.model, best), head=_classifier_head(loop.model, classes, cfg, best.epoch),
        log=log, best_epoch=best.epoch, seconds=time.perf_counter() - started, device=str(device),
    )


@dataclass
class _Data:
    """Train photos (cropped anew every epoch) and val photos, both sequences that may read and
    decode each photo only when a batch needs it (``core.train.stored_photos``)."""

    train: Sequence[torch.Tensor]
    train_labels: torch.Tensor
    val: Sequence[Image.Image]
    val_labels: torch.Tensor

    @classmethod
    def of(cls, train_images: Sequence[Image.Image | torch.Tensor], train_labels: np.ndarray,
           val_images: Sequence[Image.Image], val_labels: np.ndarray) -> _Data:
        ytr = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64)
        yval = torch.as_tensor(np.asarray(val_labels), dtype=torch.int64)
        if len(train_images) != len(ytr) or len(train_images) == 0:
            raise ValueError("need train images with one label each")
        if len(val_images) != len(yval):
            raise ValueError("need val images with one label each")
        return cls(Mapped(train_images, _as_tensor), ytr, val_images, yval)


def _new_model(backbone: PooledFeatures, classes: list[str], cfg: FineTuneConfig,
               init_head: HeadModel | None) -> _Net:
    """A trainable copy of the backbone with a new classifier (from ``init_head`` if given)."""
    bb = copy.deepcopy(backbone)
    for p in bb.parameters():
        p.requires_grad_(True)
    for layer in _frozen_layers(bb, cfg.freeze_blocks):
        layer.requires_grad_(False)
    model = _Net(bb, len(classes), cfg.dropout)
    if init_head is not None:
        if init_head.classes != list(classes):
            raise ValueError("init_head classes differ from the classes being trained")
        with torch.no_grad():
            model.fc.weight.copy_(torch.from_numpy(init_head.weight.copy()))
            model.fc.bias.copy_(torch.from_numpy(init_head.bias.copy()))
    return model


def _frozen_layers(backbone: PooledFeatures, blocks: int) -> list[nn.Module]:
    """The stem and the first ``blocks`` MBConv blocks (none when ``blocks`` is 0).

    They run at 112x112 and 56x56 (blocks 0-2 are the first two stages); autograd stops below
    the first trainable block. On 2 cores with 3 blocks a step takes 25-40 % less time, and val
    top-1 on the grocery photos was 0.825 instead of 0.849 (docs/models.md): off by default."""
    net = backbone.net
    if not 0 <= blocks <= len(net._blocks):
        raise ValueError(f"freeze_blocks must be 0..{len(net._blocks)}, not {blocks}")
    return [net._conv_stem, net._bn0, *net._blocks[:blocks]] if blocks else []


@dataclass
class _Loop:
    """What every training step uses, built once per fine-tuning."""

    model: _Net
    opt: torch.optim.Optimizer
    sched: Any
    criterion: nn.Module
    cfg: FineTuneConfig
    device: torch.device
    fmt: torch.memory_format
    gen: torch.Generator
    steps_per_epoch: int
    prefetcher: Prefetcher
    ema: AveragedModel | None = None

    @property
    def judged(self) -> nn.Module:
        """The weights val top-1 is measured on and the best epoch keeps (the average, if any)."""
        return self.ema.module if self.ema is not None else self.model

    @classmethod
    def build(cls, model: _Net, cfg: FineTuneConfig, device: torch.device, gen: torch.Generator,
              n_train: int) -> _Loop:
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(device).to(memory_format=fmt)  # type: ignore[call-overload]  # missing from torch's stubs
        opt = adamw(model.backbone, model.fc, cfg.lr, cfg.head_lr_mult, cfg.weight_decay)
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        sched = lr_scheduler(opt, cfg.schedule, cfg.pct_start, steps_per_epoch * cfg.epochs)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        # use_buffers: BatchNorm's running statistics are averaged with the weights. The decay is
        # capped so that the average spans at most a quarter of the run: on a short run (a few
        # dozen steps) 0.995 would still be the starting weights at the end.
        decay = min(cfg.ema_decay, 1 - 4 / max(5, steps_per_epoch * cfg.epochs))
        ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
               if cfg.ema_decay > 0 else None)
        return cls(model, opt, sched, criterion, cfg, device, fmt, gen, steps_per_epoch, Prefetcher(), ema)

    def train_epoch(self, data: _Data, advance: Callable[[str], None], epoch: int) -> list[float]:
        """One pass in a new random order; the step losses (``advance`` moves the bar)."""
        cfg = self.cfg
        self.model.train()
        order = _epoch_order(data.train_labels, cfg.balanced, self.gen)
        steps = [order[s * cfg.batch_size : (s + 1) * cfg.batch_size] for s in range(self.steps_per_epoch)]
        steps = [idx for idx in steps if len(idx) >= 2]  # BatchNorm needs > 1 sample
        losses: list[float] = []
        size = crop_size(cfg.train_size, epoch, cfg.start_size, cfg.ramp_epochs)
        for idx, photos in zip(steps, self.prefetcher.batches(data.train, [i.tolist() for i in steps]), strict=True):
            losses.append(self._step(data, idx, photos, size))
            advance(f"epoch {epoch}/{cfg.epochs} loss {np.mean(losses):.3f}")
        return losses

    def _step(self, data: _Data, idx: torch.Tensor, photos: list[torch.Tensor], size: int) -> float:
        cfg = self.cfg
        x = augment_batch(photos, self.gen, min_scale=cfg.min_scale, jitter=cfg.jitter, size=size)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.criterion(self.model(x).float(), data.train_labels[idx].to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach())


def _epoch_order(labels: torch.Tensor, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """One epoch's photo indices: a shuffle, or as many draws with each class equally likely
    (rare products seen as often as common ones; photos of a class drawn with replacement)."""
    if not balanced:
        return torch.randperm(len(labels), generator=gen)
    weights = 1.0 / torch.bincount(labels).double()[labels]
    return torch.multinomial(weights, len(labels), replacement=True, generator=gen)


def _epoch_record(loop: _Loop, data: _Data, epoch: int, losses: list[float], started: float) -> dict[str, Any]:
    """The training log's line for an epoch (val top-1 and loss are NaN without val photos)."""
    val_top1, val_loss, _ = (_evaluate(loop.judged, data.val, data.val_labels, loop.device, loop.prefetcher,
                                       flip=loop.cfg.tta_flip)
                             if len(data.val_labels)
                             else (float("nan"), float("nan"), None))
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_loss": val_loss,
        "val_top1": val_top1,
        "lr": float(loop.opt.param_groups[0]["lr"]),
        "crop_px": crop_size(loop.cfg.train_size, epoch, loop.cfg.start_size, loop.cfg.ramp_epochs),
        "seconds": round(time.perf_counter() - started, 2),
    }


@dataclass
class _Best:
    """The best epoch so far (val top-1, ties broken by val loss; train loss without val)
    with a copy of its weights, and the early-stopping count."""

    cfg: FineTuneConfig
    score: tuple[float, float] = (-1.0, float("inf"))
    state: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    stale: int = 0

    def update(self, record: dict[str, Any], epoch: int, model: nn.Module) -> bool:
        """Keep the epoch if it is the best; True when training should stop."""
        val_top1 = record["val_top1"]
        score = (val_top1 if not math.isnan(val_top1) else -record["train_loss"], record["val_loss"])
        if score[0] > self.score[0] or (score[0] == self.score[0] and score[1] < self.score[1]) or self.state is None:
            self.score, self.epoch, self.stale = score, epoch, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.stale += 1
        # One-cycle / cosine anneal in the last epochs: every GPU run of the recipe rose to its
        # last epoch, so by default the schedule runs to its end (the best epoch is restored
        # either way). On 2 cores the grocery run peaked at epoch 5 (0.849) and its annealed
        # epochs stayed at 0.82-0.83, 8 of 292 photos: there min_epochs would save two epochs.
        min_epochs = self.cfg.min_epochs if self.cfg.min_epochs is not None else self.cfg.epochs
        return self.stale >= self.cfg.patience and epoch >= min_epochs


def _restore(model: _Net, best: _Best) -> PooledFeatures:
    """The best epoch's weights, back on the CPU in the default layout, frozen."""
    assert best.state is not None
    model.load_state_dict(best.state)
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model.backbone


def _classifier_head(model: _Net, classes: list[str], cfg: FineTuneConfig, best_epoch: int) -> HeadModel:
    """The fine-tuned classifier as a ``HeadModel``: the same piece the fast path exports."""
    return HeadModel(
        weight=model.fc.weight.detach().numpy().copy(),
        bias=model.fc.bias.detach().numpy().copy(),
        classes=list(classes),
        info={"method": "finetune", **cfg.to_dict(), "best_epoch": best_epoch},
    )


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr, gone when done (off: the same calls do nothing)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=True)
