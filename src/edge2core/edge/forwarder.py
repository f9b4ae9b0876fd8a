"""Store and forward: drain the spool to the core, deleting only what the core confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from edge2core.common.events import PhotoForwarded
from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.metrics import (
    FORWARD_QUARANTINED,
    FORWARD_RETRIES,
    FORWARDED,
    FORWARDED_BYTES,
)
from edge2core.edge.core_client import CoreClient, RejectedUpload, TransientUploadError
from edge2core.edge.shaping import TokenBucket, Window, seconds_until_open
from edge2core.edge.spool import Spool, SpoolItem

log = get_logger(__name__)

EventSink = Callable[[PhotoForwarded], Awaitable[None]]


async def _no_events(_event: PhotoForwarded) -> None:
    return None


class Backoff:
    """Exponential backoff with full jitter, reset by a success."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.max_s, self.initial_s * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class PhotoBackoff:
    """Per-photo memory of failures: when each failing photo may be tried again, and whether
    it has failed often enough, for reasons of its own, to be quarantined.

    One poison photo then waits alone; the others keep flowing (a single backoff shared by all
    workers once let five bad photos stall every upload).
    """

    def __init__(self, *, initial_s: float = 1.0, max_s: float = 300.0, poison_after: int = 5,
                 transient_max_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.transient_max_s = transient_max_s
        self._transient: dict[str, int] = {}
        self.poison_after = poison_after
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def failed(self, sha256: str, *, transient: bool = False) -> int:
        """Record one failure; returns how many in a row this photo has had.

        A transient failure (the core or the link) does not count towards quarantine, and
        its wait stays short (at most `transient_max_s`): once the core is back, the backlog
        must not sit out long per-photo pauses.
        """
        count = self._failures.get(sha256, 0) + (0 if transient else 1)
        self._failures[sha256] = count
        self._transient[sha256] = self._transient.get(sha256, 0) + 1 if transient else 0
        if transient:
            delay = min(self.transient_max_s, self.initial_s * 2 ** (self._transient[sha256] - 1))
        else:
            delay = min(self.max_s, self.initial_s * 2 ** (count - 1))
        self._due[sha256] = self._clock() + random.uniform(delay / 2, delay)
        return count

    def is_poison(self, sha256: str) -> bool:
        return self._failures.get(sha256, 0) >= self.poison_after

    def forget(self, sha256: str) -> None:
        self._failures.pop(sha256, None)
        self._transient.pop(sha256, None)
        self._due.pop(sha256, None)

    def waiting(self) -> frozenset[str]:
        """Photos whose next try is not due yet."""
        now = self._clock()
        for sha256 in [sha for sha, due in self._due.items() if due <= now]:
            del self._due[sha256]
        return frozenset(self._due)


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        core: CoreClient,
        *,
        quarantine_dir: Path,
        concurrency: int = 4,
        on_forwarded: EventSink | None = None,
        bucket: TokenBucket | None = None,
        windows: list[Window] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        attempts: int = 3,
        window_check_s: float = 60.0,
        photo_backoff: PhotoBackoff | None = None,
    ) -> None:
        self._spool = spool
        self._core = core
        self._quarantine = quarantine_dir
        self._concurrency = concurrency
        self._on_forwarded = on_forwarded or _no_events
        self._bucket = bucket or TokenBucket(0)
        self._windows = windows or []
        self._clock = clock
        self._attempts = attempts
        self._window_check_s = window_check_s
        self._wake = asyncio.Event()
        self._in_flight: set[str] = set()
        # One claim at a time: the look into the spool runs in a thread, so without this two
        # workers could both be handed the same photo before either marks it in flight.
        self._claim_lock = asyncio.Lock()
        # (monotonic time, bytes) of recent confirmations, for the status page's rate.
        self._recent: deque[tuple[float, int]] = deque(maxlen=4096)
        self._backoff = Backoff()
        self._photos = photo_backoff or PhotoBackoff()
        self.loop: asyncio.AbstractEventLoop | None = None

    def recent_bytes_per_s(self, window_s: float = 60.0) -> float:
        """Goodput over the last minute: how fast the backlog is shrinking."""
        since = time.monotonic() - window_s
        return sum(size for at, size in self._recent if at >= since) / window_s

    def wake(self) -> None:
        """Thread-safe nudge from a door: something new is in the spool."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """`concurrency` workers, each taking the next photo as soon as it is free: one slow
        upload never idles the others (batches would wait for their slowest photo)."""
        self.loop = asyncio.get_running_loop()
        workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _worker(self) -> None:
        while True:
            if closed_for := seconds_until_open(self._windows, self._clock()):
                log.info("outside the upload windows; waiting", seconds=round(closed_for))
                # Re-check now and then: the clock may jump, the settings may change.
                await asyncio.sleep(min(closed_for, self._window_check_s))
                continue
            self._wake.clear()  # before looking, so a photo spooled after the look wakes us
            item = await self._claim()
            if item is None:
                await self._wait_for_work(1.0)
                continue
            try:
                done = await self.forward(item)
            finally:
                self._in_flight.discard(item.sha256)
            if done:
                self._backoff.reset()
                continue
            delay = self._backoff.next_delay()
            stats = await asyncio.to_thread(self._spool.stats)  # the spool's lock: off the loop
            log.warning("upload failed; backing off", delay_s=round(delay, 2),
                        pending=stats.items)
            await asyncio.sleep(delay)

    async def _claim(self) -> SpoolItem | None:
        """The most urgent photo no other worker is uploading."""
        async with self._claim_lock:
            # In a thread: `put` holds the spool's lock across fsyncs, and this loop also
            # serves HTTP.
            exclude = frozenset(self._in_flight) | self._photos.waiting()
            items = await asyncio.to_thread(self._spool.pending, 1, exclude=exclude)
            if not items:
                return None
            self._in_flight.add(items[0].sha256)
            return items[0]

    async def _wait_for_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def forward(self, item: SpoolItem) -> bool:
        """Upload one photo; True when the link is fine (the photo left the spool, or it alone
        failed and waits for its own retry or was quarantined), False when the core or the
        link failed (the caller backs off).

        A photo leaves the spool only on proof that the core stored it: a receipt naming the
        stored object's key (or the core's word that the photo was erased, never to be stored).
        """
        try:
            data = await asyncio.to_thread(self._spool.read, item.sha256)
            receipt = await self._upload(item, data)
            if not (receipt.get("key") or receipt.get("erased") is True):
                raise TransientUploadError("the core's answer names no stored key: not proof")
        except TransientUploadError as exc:
            FORWARD_RETRIES.inc()
            self._photos.failed(item.sha256, transient=True)
            log.debug("upload failed; will retry", sha256=item.sha256, error=str(exc))
            return False
        except RejectedUpload as exc:
            await asyncio.to_thread(self._quarantine_item, item, str(exc))
            return True
        except Exception as exc:
            # Whatever is wrong with one photo must not stop the others from draining: it
            # waits alone, and after repeated failures it is put aside with the reason.
            FORWARD_RETRIES.inc()
            failures = self._photos.failed(item.sha256)
            log.exception("forwarding a photo failed unexpectedly", sha256=item.sha256,
                          failures=failures)
            if self._photos.is_poison(item.sha256):
                reason = f"failed {failures} times in a row: {type(exc).__name__}: {exc}"
                await asyncio.to_thread(self._quarantine_item, item, reason)
            return True
        self._photos.forget(item.sha256)
        await asyncio.to_thread(self._spool.remove, item.sha256)
        FORWARDED.inc()
        FORWARDED_BYTES.inc(item.size)
        self._recent.append((time.monotonic(), item.size))
        await self._on_forwarded(
            PhotoForwarded(
                sha256=item.sha256,
                size=item.size,
                site=item.record.site,
                device=item.record.device,
                source=item.record.source,
                sku=item.record.sku,
                key=receipt.get("key", ""),
            )
        )
        return True

    async def _upload(self, item: SpoolItem, data: bytes) -> dict:
        """A few quick attempts ride out a blip; a longer outage is the run loop's backoff."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientUploadError),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                await self._bucket.acquire(item.size)
                return await self._core.upload(item.record, data)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _quarantine_item(self, item: SpoolItem, reason: str) -> None:
        """Keep what the core refused for an operator to look at; never delete it silently."""
        note = {"reason": reason, "record": item.record.model_dump(mode="json")}
        with contextlib.suppress(OSError):  # the reason is kept even if the bytes are gone
            write_atomic(self._quarantine / f"{item.sha256}.jpg", [self._spool.read(item.sha256)])
        write_atomic(self._quarantine / f"{item.sha256}.json", [json.dumps(note, indent=2).encode()])
        self._spool.remove(item.sha256)
        self._photos.forget(item.sha256)
        FORWARD_QUARANTINED.inc()
        log.error("photo quarantined; the others go on", sha256=item.sha256, reason=reason,
                  folder=str(self._quarantine))
