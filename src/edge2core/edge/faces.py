"""Irreversible face blurring: the edge's privacy step.

:func:`blur_faces` pixelates every (enlarged) face box to a coarse grid and then blurs it
heavily, so that no identity survives; :func:`redact` finds the faces with a detector (see
`face_detectors`, re-exported here) and blurs them, returning a :class:`RedactionRecord` of what
was redacted; :class:`FaceRedactor` is the callable the prepare pipeline runs.

Images are expected upright (apply EXIF orientation before calling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter

from edge2core.edge.face_detectors import (
    CenterFaceDetector,
    FaceBox,
    FaceDetector,
    FaceDetectorUnavailable,
    SlimFaceDetector,
    as_rgb,
    load_default_detector,
)

__all__ = [
    "CenterFaceDetector",
    "FaceBox",
    "FaceDetector",
    "FaceDetectorUnavailable",
    "FaceRedactor",
    "RedactionRecord",
    "SlimFaceDetector",
    "blur_faces",
    "load_default_detector",
    "redact",
]


def _expand(box: FaceBox | Sequence[int], margin: float, size: tuple[int, int]
            ) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, FaceBox) else tuple(box)[:4]
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    w, h = size
    return (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)),
            min(w, math.ceil(x1 + dx)), min(h, math.ceil(y1 + dy)))


def blur_faces(image: Image.Image, boxes: Iterable[FaceBox | Sequence[int]], *,
               strength: float = 1.0, margin: float = 0.4) -> Image.Image:
    """A copy of ``image`` with every box redacted beyond recognition.

    Each box is enlarged by ``margin`` of its size on every side (detector boxes run from brow
    to chin; 0.4 also covers hair and ears), averaged down to a coarse grid of about
    ``6 / strength`` cells across (detail is discarded, not merely smoothed, so it cannot be
    deconvolved back) and then Gaussian-blurred with a radius of ``0.25 * strength`` of the
    region's short side. ``strength`` >= 1 is the intended range; larger is stronger.
    Boxes may be :class:`FaceBox` or ``(x0, y0, x1, y1)`` tuples.
    """
    if strength <= 0:
        raise ValueError("strength must be > 0")
    out = image.copy() if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    cells_target = max(2, round(6 / strength))
    for box in boxes:
        x0, y0, x1, y1 = _expand(box, margin, out.size)
        rw, rh = x1 - x0, y1 - y0
        if rw <= 0 or rh <= 0:
            continue
        region = out.crop((x0, y0, x1, y1))
        long_side = max(rw, rh)
        cw = max(1, round(cells_target * rw / long_side))
        ch = max(1, round(cells_target * rh / long_side))
        coarse = region.resize((cw, ch), Image.Resampling.BOX)  # mean of each cell
        region = coarse.resize((rw, rh), Image.Resampling.NEAREST)
        radius = max(1.0, 0.25 * strength * min(rw, rh))
        # Blur on a padded canvas made of the region's own cells, so that the edges keep the
        # region's colours instead of fading to black.
        pad = math.ceil(radius)
        canvas = coarse.resize((rw + 2 * pad, rh + 2 * pad), Image.Resampling.NEAREST)
        canvas.paste(region, (pad, pad))
        blurred = canvas.filter(ImageFilter.GaussianBlur(radius)).crop((pad, pad, pad + rw,
                                                                        pad + rh))
        out.paste(blurred, (x0, y0))
    return out


# --------------------------------------------------------------------------- record


@dataclass
class RedactionRecord:
    """What the privacy step did to one photo."""

    detector: str
    detector_version: str
    faces: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "detector_version": self.detector_version,
            "faces": self.faces,
            "boxes": [list(b) for b in self.boxes],
        }


def redact(image: Image.Image, detector: FaceDetector, *, strength: float = 1.0,
           margin: float = 0.4) -> tuple[Image.Image, RedactionRecord]:
    """Detect faces and blur them; the record lists the boxes in ``image``'s pixels."""
    boxes = detector.detect(as_rgb(image))
    out = blur_faces(image, boxes, strength=strength, margin=margin) if boxes else image.copy()
    record = RedactionRecord(detector=detector.name, detector_version=detector.version,
                             faces=len(boxes), boxes=[b.as_tuple() for b in boxes])
    return out, record


class FaceRedactor:
    """``prepare.Redactor``-shaped callable: image in, (redacted image, record dict) out."""

    def __init__(self, detector: FaceDetector | None = None, *, strength: float = 1.0,
                 margin: float = 0.4) -> None:
        self.detector = detector if detector is not None else load_default_detector()
        self.strength = strength
        self.margin = margin

    def __call__(self, image: Image.Image) -> tuple[Image.Image, dict[str, Any]]:
        out, record = redact(image, self.detector, strength=self.strength, margin=self.margin)
        return out, record.to_dict()
