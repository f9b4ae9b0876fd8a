"""Scene-change sampling for camera streams: which decoded frames are worth keeping.

A frame is looked at only every 1/`sample_fps` seconds of stream time; it is kept when its small
grey thumbnail differs from the last kept one's by more than `threshold` (mean absolute
difference of 0-255 grey levels) and at least `min_interval_s` passed since the last keep. The
thumbnail is 32x24: cheap enough for every sampled frame, coarse enough that sensor noise and
compression shimmer do not count as a change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THUMB_W, THUMB_H = 32, 24


@dataclass
class SceneCounts:
    decoded: int = 0
    sampled: int = 0
    kept: int = 0


class SceneSampler:
    def __init__(self, sample_fps: float, min_interval_s: float, threshold: float) -> None:
        if sample_fps <= 0:
            raise ValueError("sample_fps must be positive")
        self.period_s = 1.0 / sample_fps
        self.min_interval_s = min_interval_s
        self.threshold = threshold
        self.counts = SceneCounts()
        self._next_sample_at: float | None = None
        self._last_kept_at: float | None = None
        self._last_thumb: np.ndarray | None = None

    def reset(self) -> None:
        """A new connection: stream times start again (the last kept scene is remembered)."""
        self._next_sample_at = None
        self._last_kept_at = None

    def due(self, t: float) -> bool:
        """Whether the frame at stream time `t` (seconds) is to be looked at; counts it."""
        self.counts.decoded += 1
        if self._next_sample_at is not None and t < self._next_sample_at:
            return False
        self._next_sample_at = t + self.period_s if self._next_sample_at is None \
            else max(self._next_sample_at + self.period_s, t)
        self.counts.sampled += 1
        return True

    def changed(self, t: float, thumb: np.ndarray) -> bool:
        """Whether the sampled frame (grey thumbnail, uint8 HxW) starts a new scene; if so it
        becomes the reference."""
        if self._last_kept_at is not None and t - self._last_kept_at < self.min_interval_s:
            return False
        if self._last_thumb is not None:
            diff = float(np.abs(thumb.astype(np.int16) - self._last_thumb.astype(np.int16)).mean())
            if diff < self.threshold:
                return False
        self._last_thumb = thumb
        self._last_kept_at = t
        self.counts.kept += 1
        return True
