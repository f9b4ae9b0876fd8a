"""The full path: fine-tune EfficientNet-Lite0 end to end on the dataset's train split.

* augmentation with torch ops on uint8 tensors (no torchvision): random resized crop (scale
  ``min_scale``..1, aspect 3/4..4/3, bilinear with antialias), horizontal flip, mild colour
  jitter (brightness, contrast, saturation), then the edge's ``(x - 127) / 128``;
* validation photos go through ``common.preprocess`` exactly as at the edge;
* defaults chosen on the grocery val split (bench/training.py, 81 classes, 2 CPU cores):
  random-init classifier, crops at 224 with scale 0.6..1, 6 epochs, lr 1e-3 -> val top-1 0.829
  (INT8 0.822) in 19 min; LP-FT init with crops at 192, scale 0.35..1, 7 epochs -> 0.740;
* AdamW, one-cycle (default) or cosine schedule, label smoothing, dropout before the linear
  classifier, early stopping on val top-1 (ties broken by val loss) with the best epoch's
  weights restored;
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

from edge2core.common.preprocess import (
    IMAGE_SIZE,
    PIXEL_MEAN,
    PIXEL_STD,
    preprocess_batch,
)
from edge2core.core.train.backbone import EMBEDDING_DIM, PooledFeatures
from edge2core.core.train.head import HeadModel

__all__ = ["FineTuneConfig", "FineTuneResult", "augment_batch", "finetune", "pick_device"]


@dataclass
class FineTuneConfig:
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    schedule: str = "onecycle"  # or "cosine"
    pct_start: float = 0.2
    patience: int = 3
    min_epochs: int | None = None  # no early stop before this (default: 60 % of epochs)
    min_scale: float = 0.6
    jitter: float = 0.2
    dropout: float = 0.2
    seed: int = 0
    train_size: int = IMAGE_SIZE  # crops are resized to this; val/edge always use 224
    channels_last: bool = True  # memory format for the convolutions (CPU and GPU)
    init: str = "random"  # or "linear_probe" (LP-FT): how the classifier starts
    max_seconds: float | None = None  # stop after the epoch that crosses it (safety net)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FineTuneConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FineTuneResult:
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


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _crop_box(h: int, w: int, min_scale: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    area = h * w
    for _ in range(10):
        target = area * (min_scale + (1 - min_scale) * float(torch.rand((), generator=gen)))
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand((), generator=gen))
        ratio = math.exp(log_ratio)
        cw = round(math.sqrt(target * ratio))
        ch = round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def augment_batch(
    images: Sequence[torch.Tensor], gen: torch.Generator, *, min_scale: float = 0.35,
    jitter: float = 0.2, size: int = IMAGE_SIZE,
) -> torch.Tensor:
    """uint8 (3, H, W) tensors -> normalised float32 (B, 3, size, size), augmented."""
    crops = []
    for img in images:
        _, h, w = img.shape
        top, left, ch, cw = _crop_box(h, w, min_scale, gen)
        crop = img[:, top : top + ch, left : left + cw].unsqueeze(0).float()
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand((), generator=gen)) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    x = torch.cat(crops)
    b = x.shape[0]
    if jitter > 0:
        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * jitter)

        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = x * factor()  # brightness
        mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        gray = (x * weights).sum(1, keepdim=True)
        x = (x - gray) * factor() + gray  # saturation
        x = x.clamp(0, 255)
    return (x - PIXEL_MEAN) / PIXEL_STD


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 64
) -> tuple[float, float, np.ndarray]:
    model.eval()
    logits = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch].to(device).contiguous(memory_format=torch.channels_last)
            logits.append(model(xb).float().cpu())
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
    first steps); otherwise the classifier starts at random."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    cfg = config or FineTuneConfig()
    device = device or pick_device()
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    train_t = [im if isinstance(im, torch.Tensor) else to_uint8_tensor(im) for im in train_images]
    ytr = torch.as_tensor(np.asarray(train_labels), dtype=torch.int64)
    xval = (torch.from_numpy(preprocess_batch(val_images)) if len(val_images)
            else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE))
    yval = torch.as_tensor(np.asarray(val_labels), dtype=torch.int64)
    if len(train_t) != len(ytr) or len(train_t) == 0:
        raise ValueError("need train images with one label each")

    bb = copy.deepcopy(backbone)
    for p in bb.parameters():
        p.requires_grad_(True)
    model = _Net(bb, len(classes), cfg.dropout)
    if init_head is not None:
        if init_head.classes != list(classes):
            raise ValueError("init_head classes differ from the classes being trained")
        with torch.no_grad():
            model.fc.weight.copy_(torch.from_numpy(init_head.weight.copy()))
            model.fc.bias.copy_(torch.from_numpy(init_head.bias.copy()))
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)  # type: ignore[call-overload]  # missing from torch's stubs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_t) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "onecycle" and total >= 4:
        pct = min(0.5, max(cfg.pct_start, 2.0 / total))  # both phases need >= 1 step
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    elif cfg.schedule in ("cosine", "onecycle"):
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    log: list[dict[str, Any]] = []
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, stale = 0, 0
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("fine-tuning", total=total)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_t), generator=gen)
            losses = []
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                if len(idx) < 2:  # BatchNorm needs > 1 sample
                    continue
                x = augment_batch([train_t[i] for i in idx.tolist()], gen, min_scale=cfg.min_scale,
                                  jitter=cfg.jitter, size=cfg.train_size)
                x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = criterion(model(x).float(), ytr[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=f"epoch {epoch}/{cfg.epochs} loss {np.mean(losses):.3f}")
            val_top1, val_loss, _ = (_evaluate(model, xval, yval, device) if len(yval)
                                     else (float("nan"), float("nan"), None))
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_loss": val_loss,
                "val_top1": val_top1,
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            log.append(record)
            if on_epoch is not None:
                on_epoch(record)
            score = (val_top1 if not math.isnan(val_top1) else -record["train_loss"], val_loss)
            if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]) or best_state is None:
                best, best_epoch, stale = score, epoch, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                stale += 1
                # with one-cycle / cosine, val dips at the peak learning rate and recovers as
                # it anneals: do not stop before most of the schedule has run
                min_epochs = cfg.min_epochs if cfg.min_epochs is not None else math.ceil(0.6 * cfg.epochs)
                if stale >= cfg.patience and epoch >= min_epochs:
                    break
            if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    out_backbone = model.backbone
    for p in out_backbone.parameters():
        p.requires_grad_(False)
    head = HeadModel(
        weight=model.fc.weight.detach().numpy().copy(),
        bias=model.fc.bias.detach().numpy().copy(),
        classes=list(classes),
        info={"method": "finetune", **cfg.to_dict(), "best_epoch": best_epoch},
    )
    return FineTuneResult(
        backbone=out_backbone, head=head, log=log, best_epoch=best_epoch,
        seconds=time.perf_counter() - started, device=str(device),
    )
