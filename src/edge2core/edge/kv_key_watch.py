"""Watch a few keys of a JetStream KV bucket, with consumers a site's permissions can scope.

A whole-bucket watch (nats.py's `watchall`, or `watch(key)`) creates an unnamed consumer on
`$JS.API.CONSUMER.CREATE.<stream>`, which names no subject: allowing it lets a client read
every key. Here each key gets its own consumer, named, created on
`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`; nats-server (2.10+) refuses such a request
whose consumer filters anything else, so the core can allow a site exactly its own keys
(`common/leaf_permissions`). Same interface as nats.py's `KeyWatcher`: `updates(timeout)`
returns an update, None once when every key's current value (or its absence) has been
delivered, and raises `nats.errors.TimeoutError` when nothing came; `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

__all__ = ["KeyUpdate", "KeysWatcher", "watch_keys"]

_IDLE_S = 300.0  # the core drops a watch's consumer after this long without its client


@dataclass(frozen=True)
class KeyUpdate:
    """One key's new value (`operation` None) or its deletion ("DEL", "PURGE"). `delta`: how
    many updates of this key's watch were still pending after this one."""

    key: str
    value: bytes
    operation: str | None
    delta: int


class KeysWatcher:
    def __init__(self, prefix: str, keys: Sequence[str]) -> None:
        self._prefix = prefix
        self._waiting = set(keys)  # keys whose current value has not been delivered yet
        self._updates: asyncio.Queue[KeyUpdate | None] = asyncio.Queue()
        self._subs: list[Any] = []

    def _delivered(self, key: str) -> None:
        if key in self._waiting:
            self._waiting.discard(key)
            if not self._waiting:
                self._updates.put_nowait(None)

    async def on_msg(self, msg: Any) -> None:
        key = msg.subject[len(self._prefix):]
        pending = msg.metadata.num_pending
        operation = msg.header.get("KV-Operation") if msg.header else None
        self._updates.put_nowait(KeyUpdate(key, msg.data, operation, pending))
        if pending == 0:
            self._delivered(key)

    async def updates(self, timeout: float = 5.0) -> KeyUpdate | None:
        try:
            return await asyncio.wait_for(self._updates.get(), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def watch_keys(js: Any, bucket: str, keys: Sequence[str]) -> KeysWatcher:
    """Watch `keys` of `bucket` through `js` (a JetStream context, on the core's domain for a
    site). Raises what nats.py raises when a consumer cannot be made (no link, not allowed)."""
    prefix = f"$KV.{bucket}."
    watcher = KeysWatcher(prefix, keys)
    try:
        for key in keys:
            config = ConsumerConfig(
                name=f"e2c{secrets.token_hex(8)}", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE, inactive_threshold=_IDLE_S, mem_storage=True, num_replicas=1)
            sub = await js.subscribe(prefix + key, stream=f"KV_{bucket}", config=config,
                                     cb=watcher.on_msg, manual_ack=True)
            watcher._subs.append(sub)
            info = await sub.consumer_info()
            if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
                watcher._delivered(key)  # the key has no value now (one that comes later is news)
    except BaseException:
        await watcher.stop()
        raise
    return watcher
