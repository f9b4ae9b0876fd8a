"""A small thread pool that is fair between keys (devices): one key's slow job never holds up
another key's jobs, and each key's jobs still run in order.

The MQTT door hands every capture to it from paho's network thread, which must never decode a
photo itself: a 16-second decode there once held up every capture of the site for a minute.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from edge2core.common.logging import get_logger

log = get_logger(__name__)

Job = Callable[[], None]


class FairWorkers:
    """`workers` threads; jobs queue per key, keys are served round-robin, and a key runs on
    at most one thread at a time (per-device order is kept; PUBACKs may interleave across
    devices, which MQTT brokers accept).

    `submit` never blocks: the broker's in-flight window (MQTT receive maximum / NATS
    `max_ack_pending`) bounds how many captures can be waiting here.
    """

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # keys with queued jobs and no running job
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            queue = self._queues.get(key)
            if queue is None:  # idle key: becomes ready
                self._queues[key] = deque([job])
                self._ready.append(key)
                self._cond.notify()
            else:  # queued or running: its turn comes after the running job
                queue.append(job)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next(self) -> tuple[str, Job] | None:
        with self._cond:
            while not self._ready and not self._closed:
                self._cond.wait()
            if not self._ready:
                return None
            key = self._ready.popleft()
            return key, self._queues[key].popleft()

    def _done(self, key: str) -> None:
        with self._cond:
            if self._queues[key]:
                self._ready.append(key)  # back of the line: round-robin between devices
                self._cond.notify()
            else:
                del self._queues[key]

    def _run(self) -> None:
        while (item := self._next()) is not None:
            key, job = item
            try:
                job()
            except BaseException:
                log.exception("worker job failed", key=key)
            finally:
                self._done(key)
