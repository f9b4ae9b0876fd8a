"""Quality gates: blank, too dark, too bright or badly blurred photos, measured cheaply.

Measures come from a 256x256 grayscale copy, so the cost does not grow with the photo.
Thresholds were set on the grocery photos: the 1st percentile of sharp photos has a
Laplacian variance of about 84, a 3-pixel Gaussian blur brings the 95th percentile to 13.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
from PIL import Image

_SIDE = 256


class QualityAction(StrEnum):
    REJECT = "reject"  # refuse the photo with the reasons
    FLAG = "flag"  # keep it, with the reasons recorded for curation
    OFF = "off"


@dataclass(frozen=True)
class QualityPolicy:
    # Flag by default: nothing is lost, curation decides; a site can choose to reject instead.
    action: QualityAction = QualityAction.FLAG
    min_brightness: float = 0.08
    max_brightness: float = 0.97
    min_contrast: float = 0.02
    min_sharpness: float = 30.0


@dataclass(frozen=True)
class QualityReport:
    brightness: float  # mean luma, 0..1
    contrast: float  # luma standard deviation, 0..1
    sharpness: float  # variance of the Laplacian at 256x256
    flags: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return data


def measure(image: Image.Image) -> QualityReport:
    gray = np.asarray(
        image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR), dtype=np.float32
    )
    lap = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    )
    return QualityReport(
        brightness=round(float(gray.mean()) / 255, 4),
        contrast=round(float(gray.std()) / 255, 4),
        sharpness=round(float(lap.var()), 2),
    )


def judge(report: QualityReport, policy: QualityPolicy) -> QualityReport:
    """The same measures with the flags this policy raises."""
    # One reason each, the most basic first: a black frame is too dark, not also blank and
    # blurry (it has no contrast and no edges either).
    flags = []
    if report.brightness < policy.min_brightness:
        flags.append("too_dark")
    elif report.brightness > policy.max_brightness:
        flags.append("too_bright")
    elif report.contrast < policy.min_contrast:
        flags.append("blank")
    elif report.sharpness < policy.min_sharpness:
        flags.append("blurry")
    return QualityReport(report.brightness, report.contrast, report.sharpness, tuple(flags))


def assess(image: Image.Image, policy: QualityPolicy) -> QualityReport:
    return judge(measure(image), policy)
