"""Desired state for the edge sites, kept in JetStream KV buckets that every site watches.

`e2c-deploy` says which model each site should run: `fleet` for everybody, `site.<id>` for a
site a canary targets. `e2c-catalogue` holds one key per product. The registry and the
catalogue call in from worker threads (training, API handlers run in a thread pool), so writes
are handed to the event loop that owns the NATS connection and waited for: a promotion
returns once the sites can see it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Protocol

from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from edge2core.common.events import (
    CATALOGUE_BUCKET,
    DEPLOY_BUCKET,
    FLEET_KEY,
    ModelPublished,
    product_key,
    site_key,
)
from edge2core.common.logging import get_logger
from edge2core.common.products import Product
from edge2core.common.signed_catalogue import sign_product
from edge2core.common.signing import Signer

log = get_logger(__name__)


class DeploySink(Protocol):
    """Where the registry's decisions about sites go."""

    def production(self, model: ModelPublished) -> None: ...

    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None: ...

    def end_canary(self, sites: Sequence[str]) -> None: ...


class NoSites:
    """A core without a broker (tools, tests of the registry alone): nothing to tell."""

    def production(self, model: ModelPublished) -> None:
        pass

    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None:
        pass

    def end_canary(self, sites: Sequence[str]) -> None:
        pass


class KvBucket:
    """A KV bucket used from any thread; writes are confirmed by JetStream before returning."""

    def __init__(self, kv: KeyValue, loop: asyncio.AbstractEventLoop, timeout_s: float = 10.0) -> None:
        self._kv = kv
        self._loop = loop
        self._timeout_s = timeout_s

    @classmethod
    async def open(cls, js: Any, bucket: str, history: int = 5, replicas: int = 1) -> KvBucket:
        """The bucket, made with `replicas` copies (a NATS cluster's nodes) when missing; an
        existing one with another number of copies is changed to `replicas` (JetStream adds or
        drops the copies itself)."""
        try:
            kv = await js.key_value(bucket)
        except Exception:
            kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, replicas=replicas))
        else:
            info = await js.stream_info(f"KV_{bucket}")
            if info.config.num_replicas != replicas:
                info.config.num_replicas = replicas
                await js.update_stream(info.config)
                log.info("KV bucket replicas changed", bucket=bucket, replicas=replicas)
        return cls(kv, asyncio.get_running_loop())

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()  # a late write must not land after a newer one
            raise

    def _write(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._on_loop():  # called on the loop itself: waiting here would deadlock it
            self._loop.create_task(coro)
        else:
            self._run(coro)

    def put(self, key: str, value: bytes) -> None:
        self._write(self._kv.put(key, value))

    def delete(self, key: str) -> None:
        self._write(self._delete(key))

    async def _delete(self, key: str) -> None:
        try:
            await self._kv.delete(key)
        except KeyNotFoundError:
            pass

    def get(self, key: str) -> bytes | None:
        if self._on_loop():
            raise RuntimeError("KvBucket.get() blocks: call it from a worker thread")
        return self._run(self._get(key))

    async def _get(self, key: str) -> bytes | None:
        try:
            return (await self._kv.get(key)).value
        except KeyNotFoundError:
            return None

    def keys(self) -> list[str]:
        if self._on_loop():
            raise RuntimeError("KvBucket.keys() blocks: call it from a worker thread")
        return list(self._run(self._keys()))

    async def _keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except Exception:
            return []


class SiteBoard:
    """The registry's DeploySink over the `e2c-deploy` bucket."""

    def __init__(self, bucket: KvBucket) -> None:
        self._bucket = bucket

    def production(self, model: ModelPublished) -> None:
        self._bucket.put(FLEET_KEY, model.model_dump_json().encode())
        log.info("fleet target set", version=model.version)

    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None:
        for site in sites:
            self._bucket.put(site_key(site), model.model_dump_json().encode())
        log.info("canary target set", version=model.version, sites=list(sites))

    def end_canary(self, sites: Sequence[str]) -> None:
        for site in sites:
            self._bucket.delete(site_key(site))
        if sites:
            log.info("canary targets cleared; the sites follow the fleet", sites=list(sites))

    def sync(self, production: ModelPublished | None, canary: ModelPublished | None,
             canary_sites: Sequence[str]) -> None:
        """At start: make the bucket say what the registry says (it may have changed while
        the broker was down, or the broker's store may be new)."""
        if production is not None:
            self.production(production)
        wanted = {site_key(s) for s in canary_sites} if canary is not None else set()
        stale = [k for k in self._bucket.keys() if k.startswith("site.") and k not in wanted]
        for key in stale:
            self._bucket.delete(key)
        if canary is not None:
            self.canary(canary, canary_sites)


class CatalogueFeed:
    """Catalogue changes -> the `e2c-catalogue` bucket (the Catalogue's on_change hook)."""

    def __init__(self, bucket: KvBucket, signer: Signer | None = None) -> None:
        self._bucket = bucket
        # Each value signed like the models (`common/signed_catalogue`): sites verify them.
        self._signer = signer
        self._lock = threading.Lock()
        self._sent: dict[str, bytes] = {}  # what this process last put, per key

    def _value(self, product: Product) -> bytes:
        if self._signer is None:
            return product.model_dump_json().encode()
        return json.dumps(sign_product(self._signer, product), sort_keys=True).encode()

    def __call__(self, products: Iterable[Product]) -> None:
        with self._lock:
            for product in products:
                key, value = product_key(product.sku), self._value(product)
                self._bucket.put(key, value)
                self._sent[key] = value

    def sync(self, products: list[Product]) -> None:
        """Every product whose value in the bucket differs (each put is an update every site
        applies), and no key for a product the catalogue no longer has."""
        with self._lock:
            for product in products:
                key, value = product_key(product.sku), self._value(product)
                if self._sent.get(key) != value and self._bucket.get(key) != value:
                    self._bucket.put(key, value)
                self._sent[key] = value
        wanted = {product_key(p.sku) for p in products}
        for key in self._bucket.keys():
            if key not in wanted:
                self._bucket.delete(key)
                self._sent.pop(key, None)


async def open_buckets(js: Any, replicas: int = 1) -> tuple[KvBucket, KvBucket]:
    """(deploy, catalogue) buckets, each kept in `replicas` copies (`KvBucket.open`)."""
    deploy = await KvBucket.open(js, DEPLOY_BUCKET, history=10, replicas=replicas)
    catalogue = await KvBucket.open(js, CATALOGUE_BUCKET, history=3, replicas=replicas)
    return deploy, catalogue
