"""Near-duplicate suppression: a kiosk that fires ten times at the same item sends one photo."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge2core.common.images import hamming


@dataclass(frozen=True)
class Recent:
    at: float
    phash: int
    sha256: str
    label: str | None


class NearDuplicateWindow:
    """Remembers each device's recent photos; a close perceptual hash within the window is a
    duplicate of the photo already taken. Different labels are never duplicates: a cashier
    who scans two products one after the other meant two photos."""

    def __init__(
        self,
        window_s: float = 10.0,
        max_distance: int = 4,
        per_device: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_distance = max_distance
        self._per_device = per_device
        self._clock = clock
        self._recent: dict[str, deque[Recent]] = {}
        self._lock = threading.Lock()

    def match(self, device: str, phash: int, label: str | None) -> str | None:
        """The sha256 of the photo this one duplicates, if any."""
        if self.window_s <= 0:
            return None
        now = self._clock()
        with self._lock:
            recent = self._recent.get(device, ())
            for item in reversed(recent):
                if now - item.at > self.window_s:
                    break
                if item.label == label and hamming(item.phash, phash) <= self.max_distance:
                    return item.sha256
        return None

    def remember(self, device: str, phash: int, sha256: str, label: str | None) -> None:
        with self._lock:
            recent = self._recent.setdefault(device, deque(maxlen=self._per_device))
            recent.append(Recent(self._clock(), phash, sha256, label))
