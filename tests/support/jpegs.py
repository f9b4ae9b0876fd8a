"""Small real JPEGs made on the spot."""

from __future__ import annotations

import io

from PIL import Image


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30),
               **save: object) -> bytes:
    """A small real JPEG; `save` passes Pillow options such as exif=..."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", **save)
    return out.getvalue()
