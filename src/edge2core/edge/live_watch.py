"""Watches a freshly swapped-in model's answers: if its confidence falls off against the model
it replaced, or its runs start failing, the recogniser rolls back to the previous one."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class WatchPolicy:
    window: int = 50  # answers needed before judging
    max_confidence_drop: float = 0.25  # absolute drop of the mean confidence
    max_error_rate: float = 0.2


class LiveWatch:
    def __init__(self, policy: WatchPolicy = WatchPolicy()) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._baseline: float | None = None
        self._version: int | None = None
        self._confidences: deque[float] = deque(maxlen=policy.window)
        self._errors: deque[bool] = deque(maxlen=policy.window)

    def swapped(self, version: int) -> None:
        """A new version serves: what the old one did becomes the baseline."""
        with self._lock:
            if len(self._confidences) >= self.policy.window // 2:
                self._baseline = sum(self._confidences) / len(self._confidences)
            self._version = version
            self._confidences.clear()
            self._errors.clear()

    def observe(self, version: int, confidence: float | None) -> bool:
        """Record an answer (None: the run failed); True if `version` should be rolled back."""
        with self._lock:
            if version != self._version:
                return False
            self._errors.append(confidence is None)
            if confidence is not None:
                self._confidences.append(confidence)
            return self._failing()

    def _failing(self) -> bool:
        if len(self._errors) >= self.policy.window:
            if sum(self._errors) / len(self._errors) > self.policy.max_error_rate:
                return True
        if self._baseline is None or len(self._confidences) < self.policy.window:
            return False
        mean = sum(self._confidences) / len(self._confidences)
        return mean < self._baseline - self.policy.max_confidence_drop
