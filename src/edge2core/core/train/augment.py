"""Training-time augmentation with torch ops on uint8 tensors (no torchvision).

Random resized crop (scale ``min_scale``..1, aspect 3/4..4/3, bilinear with antialias, as in
Szegedy et al. 2015 and torchvision's ``RandomResizedCrop``), horizontal flip, mild colour
jitter (brightness, contrast, saturation), then the edge's ``(x - 127) / 128``.  Every draw
comes from the generator passed in, so a seeded run crops the same way every time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edge2core.common.preprocess import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD

__all__ = ["augment_batch", "crop_size"]


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


def crop_size(train_size: int, epoch: int, start_size: int | None = None, ramp_epochs: int = 0) -> int:
    """Progressive resizing: the training crop's side in pixels for ``epoch`` (1-based).

    The first ``ramp_epochs`` epochs grow linearly from ``start_size`` towards ``train_size``
    in multiples of 32 (the network's stride); later epochs, or no ``start_size``, use
    ``train_size``. Why: a 160 px step costs about half a 224 px one (the work grows with the
    pixels), and the first epochs at a high learning rate learn coarse features that carry over
    (fast.ai's and FFCV's recipes; EfficientNetV2's progressive learning, Tan & Le 2021).
    Raises ValueError on a size below 32 or a negative ``ramp_epochs``."""
    if ramp_epochs < 0 or train_size < 32 or (start_size is not None and start_size < 32):
        raise ValueError("sizes must be >= 32 px and ramp_epochs >= 0")
    if start_size is None or epoch > ramp_epochs:
        return train_size
    size = start_size + (train_size - start_size) * (epoch - 1) / ramp_epochs
    return max(32, int(round(size / 32)) * 32)
