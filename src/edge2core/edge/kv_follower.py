"""Follow a JetStream KV bucket of the core from an edge site, through link outages.

The watch runs on the site's own broker, across its leaf link to the core's JetStream domain.
A watch does not survive the link going down, so the site's broker is watched too (its
monitoring endpoint lists leaf connections): each time the link comes back the watch is made
again, and the first thing a new watch delivers is the bucket's current state. A site that was
offline for a day therefore converges within a second of the link returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import nats.errors

from edge2core.common.logging import get_logger
from edge2core.edge.kv_key_watch import watch_keys

log = get_logger(__name__)

State = dict[str, bytes]


class LeafLink:
    """Counts the times this site's broker (re)connected its leaf link to the core."""

    def __init__(self, monitor_url: str, every_s: float = 1.0) -> None:
        self._url = monitor_url.rstrip("/") + "/leafz"
        self._every_s = every_s
        self.generation = 0
        self.up = False
        self._down_since: float | None = time.monotonic()
        self._seen: frozenset[tuple[str, int]] = frozenset()

    def observe(self, leafs: list[dict[str, Any]]) -> None:
        """Pure: a new generation when the set of leaf connections is new and not empty."""
        current = frozenset((str(leaf.get("ip")), int(leaf.get("port") or 0)) for leaf in leafs)
        if current and current != self._seen:
            self.generation += 1
            log.info("leaf link to the core is up", generation=self.generation)
        if not current and self.up:
            log.warning("leaf link to the core is down; serving from local state")
        if current:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.monotonic()
        self.up, self._seen = bool(current), current

    def down_for(self) -> float:
        """Seconds since the link went down (0 while it is up)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await http.get(self._url)
                    self.observe(response.json().get("leafs") or [])
                await asyncio.sleep(self._every_s)


class KvFollower:
    """Calls `apply(state)` with the bucket's whole state (key -> value) once a watch has
    delivered it, then after every change. Deleted keys leave the state. With `keys`, only
    those keys are watched (and are the state): what a site may read of a bucket whose other
    keys are other sites' (`kv_key_watch`)."""

    def __init__(
        self,
        js: Any,
        bucket: str,
        apply: Callable[[State], Awaitable[None]],
        *,
        link: LeafLink | None = None,
        resync_s: float = 600.0,
        retry_s: float = 2.0,
        keys: tuple[str, ...] = (),
    ) -> None:
        self._keys = keys
        self._js = js
        self._bucket = bucket
        self._apply = apply
        self._link = link
        self._resync_s = resync_s
        self._retry_s = retry_s

    async def run(self) -> None:
        while True:
            # Read before the watch is made: a link that flaps meanwhile makes a new watch.
            generation = self._link.generation if self._link else 0
            try:
                kv = await self._js.key_value(self._bucket)
                watcher = await (watch_keys(self._js, self._bucket, self._keys) if self._keys
                                 else kv.watchall())
            except Exception as exc:  # the core, or the link to it, is not there yet
                log.debug("cannot watch yet", bucket=self._bucket, error=repr(exc))
                await asyncio.sleep(self._retry_s)
                continue
            try:
                await self._follow(watcher, generation)
            except Exception:  # applying failed (a full disk?): never stop following
                log.exception("following the bucket failed; watching again", bucket=self._bucket)
                await asyncio.sleep(self._retry_s)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def _follow(self, watcher: Any, generation: int) -> None:
        """Until the link comes back (a new generation) or `resync_s` pass."""
        state: State = {}
        live = False  # the initial values have all arrived
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._resync_s
        while loop.time() < deadline:
            if self._link is not None and self._link.generation != generation:
                log.info("re-watching after the link came back", bucket=self._bucket)
                return
            try:
                entry = await watcher.updates(timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            if entry is None:  # the end of the initial values
                live = True
            elif entry.operation in ("DEL", "PURGE"):
                state.pop(entry.key, None)
            else:
                state[entry.key] = entry.value
            # A burst of updates (a catalogue import) is applied once, when it has drained.
            if live and (entry is None or not entry.delta):
                await self._apply(dict(state))
