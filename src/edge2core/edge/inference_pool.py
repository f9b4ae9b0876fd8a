"""One bounded pool for every recognition request, whichever door it came in by.

HTTP (`await pool.recognize(...)`) and MQTT (`pool.submit(...)` from paho's network thread,
with a done-callback) share the same few worker threads, sized for the cores and the ONNX
Runtime threads of each run, so concurrency is bounded in one place: excess load waits in the
queue instead of oversubscribing the CPU, and a full queue refuses at once (`Overloaded`).

A worker takes the oldest request, then, with micro-batching on (`max_batch` > 1), whatever
else is already waiting (or arrives within `max_wait_s`), up to `max_batch`; it decodes and
preprocesses each photo into one row of its own reusable batch buffer and runs them through
ONE `session.run` on the model it read first (a hot swap in between never mixes versions in a
batch). Every answer is built and judged (LiveWatch) per request, as a single request would be.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge2core.common.preprocess import IMAGE_SIZE
from edge2core.edge.inference import Answer, NoModel, Recognizer

if TYPE_CHECKING:
    from edge2core.config import EdgeSettings


class Overloaded(RuntimeError):
    """The queue of waiting recognition requests is full: try again shortly."""


@dataclass(slots=True)
class _Job:
    data: bytes
    request_id: str | None
    future: Future[Answer]
    start: float


_STOP = None


def default_workers(inference_threads: int = 1) -> int:
    """One worker per core's worth of ONNX Runtime threads."""
    return max(1, (os.cpu_count() or 1) // max(1, inference_threads))


def workers_for(settings: EdgeSettings) -> int:
    """The pool size the edge runs with: the setting, else one per `inference_threads` cores."""
    return settings.recognize_workers or default_workers(settings.inference_threads)


class InferencePool:
    def __init__(
        self,
        recognizer: Recognizer,
        *,
        workers: int | None = None,
        max_batch: int = 1,
        max_wait_s: float = 0.0,
        max_queue: int = 1024,
        name: str = "e2c-infer",
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0")
        self.recognizer = recognizer
        self.workers = workers or default_workers()
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._waiting = 0  # approximate queue length, for the bound
        self._count_lock = threading.Lock()
        self._closed = False
        self.batches = 0  # runs done, and requests answered by them (batching observability)
        self.batched_requests = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def for_settings(cls, recognizer: Recognizer, settings: EdgeSettings) -> InferencePool:
        return cls(
            recognizer,
            workers=workers_for(settings),
            max_batch=settings.recognize_batch_max,
            max_wait_s=settings.recognize_batch_wait_ms / 1000,
            max_queue=settings.recognize_queue_max,
        )

    # ------------------------------------------------------------------ submitting

    def submit(self, data: bytes, request_id: str | None = None) -> Future[Answer]:
        """Thread-safe and non-blocking: the answer (or the request's error) comes in the
        future, set on a worker thread (so done-callbacks run there)."""
        future: Future[Answer] = Future()
        with self._count_lock:
            if self._closed:
                raise RuntimeError("the inference pool is closed")
            if self._waiting >= self.max_queue:
                raise Overloaded(f"{self._waiting} recognition requests already waiting")
            self._waiting += 1
            # Under the lock: nothing is queued behind the workers' stop marks.
            self._queue.put(_Job(data, request_id, future, time.perf_counter()))
        return future

    async def recognize(self, data: bytes, request_id: str | None = None) -> Answer:
        """For the event loop: waits without a thread of its own. Cancelling the wait (the
        client went away) drops the request if no worker has started on it yet."""
        return await asyncio.wrap_future(self.submit(data, request_id))

    def close(self, wait: bool = True) -> None:
        """Answer what is queued, then stop the workers."""
        with self._count_lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    # ------------------------------------------------------------------ the workers

    def _take(self) -> tuple[list[_Job], bool]:
        """The next batch: the oldest request, then others already waiting (or arriving
        within max_wait_s), up to max_batch. The flag says a stop was seen."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        jobs = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _work(self) -> None:
        buffer = np.empty((self.max_batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        while True:
            jobs, stop = self._take()
            with self._count_lock:
                self._waiting -= len(jobs)
            if jobs:
                try:
                    self._run(jobs, buffer)
                except BaseException as exc:
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
            if stop:
                return

    def _run(self, jobs: list[_Job], buffer: np.ndarray) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        recognizer = self.recognizer
        model = recognizer.model
        if model is None:
            for job in live:
                job.future.set_exception(NoModel())
            return
        ready: list[_Job] = []
        for job in live:
            try:
                # A bad photo is the sender's fault, not the model's: it fails alone, unjudged.
                recognizer.tensor(job.data, out=buffer[len(ready)])
            except Exception as exc:
                job.future.set_exception(exc)
                continue
            ready.append(job)
        if not ready:
            return
        results = recognizer.recognize_tensors(
            model, buffer[: len(ready)], [j.start for j in ready], [j.request_id for j in ready]
        )
        with self._count_lock:
            self.batches += 1
            self.batched_requests += len(ready)
        for job, result in zip(ready, results, strict=True):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
