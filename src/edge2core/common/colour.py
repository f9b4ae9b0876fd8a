"""Pixels as the model should see them: 8-bit sRGB, whatever the camera wrote.

One path for capture, recognition, training and the catalogue (`images.decode_rgb` calls it):

- an embedded ICC profile (phones write Display P3, cameras Adobe RGB or ProPhoto) is applied
  with littleCMS (Pillow's `ImageCms`) before the profile is stripped, so colours do not shift;
  sRGB profiles are skipped (nothing to do, and no cost on the common path);
- high bit depth (16-bit greyscale PNG from machine-vision cameras) is scaled to 8 bits, not
  clipped (clipping made a gradient an almost white frame);
- transparency (catalogue cut-outs) is composited over one fixed light background;
- palette, greyscale, CMYK and the rest become RGB.
Unreadable metadata (a broken profile, EXIF that is not TIFF) is ignored: it is stripped
anyway, and only damaged pixels make a photo corrupt.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms

# Composited under transparent pixels everywhere (capture, recognition, training).
BACKGROUND = (255, 255, 255)

_HIGH_BIT_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_ICC_MODES = {"RGB", "RGBA", "CMYK", "L"}
_SRGB = ImageCms.createProfile("sRGB")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def to_srgb8(image: Image.Image) -> Image.Image:
    """A loaded image of any mode -> an RGB image of 8-bit sRGB pixels (new or the same)."""
    image = _eight_bit(image)
    icc = image.info.get("icc_profile")
    if icc and image.mode in _ICC_MODES:
        image = _apply_profile(image, icc)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _over_background(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def orientation(image: Image.Image) -> Image.Transpose | None:
    """How to turn the image upright by its EXIF orientation tag; None when there is nothing
    to do, or the tag is missing, unreadable or out of range (ignored: stripped anyway)."""
    try:
        value = image.getexif().get(0x0112)
    except Exception:
        return None
    return _TRANSPOSE.get(value) if isinstance(value, int) else None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale scaled (not clipped) to 8-bit "L"."""
    full_scale = _HIGH_BIT_MODES.get(image.mode)
    if full_scale is None and image.mode not in ("I", "F"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    if full_scale is None:  # "I" or "F": 8-bit values, or a 16-bit source Pillow widened
        full_scale = 65535 if pixels.size and pixels.max() > 255 else 255
    scaled = np.clip(np.rint(pixels * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    out = Image.fromarray(scaled, mode="L")
    out.info = {k: v for k, v in image.info.items() if k != "transparency"}
    return out


def _apply_profile(image: Image.Image, icc: bytes) -> Image.Image:
    transform = _transform(hashlib.sha256(icc).digest(), icc, image.mode)
    if transform is None:
        return image
    try:
        out = ImageCms.applyTransform(image, transform)
    except (ImageCms.PyCMSError, ValueError, OSError):
        return image
    assert out is not None  # None only with inPlace=True
    return out


@lru_cache(maxsize=32)
def _transform(_key: bytes, icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The source-profile-to-sRGB transform, or None for sRGB itself or a profile littleCMS
    cannot use (ignored, like any unreadable metadata). Cached: phones reuse a few profiles."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(source).strip().lower().startswith("srgb"):
            return None
        out_mode = "RGBA" if mode == "RGBA" else "RGB"
        return ImageCms.buildTransform(
            source, _SRGB, mode, out_mode, renderingIntent=ImageCms.Intent.PERCEPTUAL
        )
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
        return None


def _over_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


__all__ = ["BACKGROUND", "orientation", "to_srgb8"]
