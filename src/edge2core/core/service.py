"""`edge2core core up`: wire the core's parts together and serve them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats
import uvicorn

from edge2core.common.products import Product
from edge2core.common.logging import get_logger
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.signing import Signer
from edge2core.config import CoreSettings
from edge2core.core import storage
from edge2core.core.api import CoreServices, create_core_app
from edge2core.core.catalogue import Catalogue
from edge2core.core.datasets import DatasetStore
from edge2core.core.deployments import CatalogueFeed, DeploySink, SiteBoard, open_buckets
from edge2core.core.gate import ModelGate
from edge2core.core.receiver import ImageReceiver
from edge2core.core.registry import ModelRegistry
from edge2core.core.trainer import Trainer

log = get_logger(__name__)


def core_nats_config(settings: CoreSettings) -> NatsServerConfig:
    return NatsServerConfig(
        name="e2c-core",
        store_dir=settings.data_dir / "nats" / "jetstream",
        host=settings.host,
        client_port=settings.nats_port,
        http_port=settings.nats_http_port,
        jetstream_domain=settings.jetstream_domain,
        leafnode_port=settings.leafnode_port,
    )


def build_core_services(
    settings: CoreSettings,
    sites: DeploySink | None = None,
    on_catalogue_change: Callable[[list[Product]], None] | None = None,
) -> CoreServices:
    """The core's parts; `sites` and `on_catalogue_change` reach the edge sites (KV buckets),
    left out where no broker runs (tools, tests of the parts)."""
    sessions = storage.database(settings)  # Alembic upgrade to the newest schema
    store = storage.object_store(settings)  # local directory or S3, by object_store_url
    datasets = DatasetStore(store, sessions)
    catalogue = Catalogue(sessions, on_change=on_catalogue_change)
    registry = ModelRegistry(store, sessions, sites,
                             signer=Signer.load_or_create(settings.data_dir / "keys"))
    trainer = Trainer(datasets, store, registry, threads=settings.training_threads,
                      cache_dir=settings.embedding_cache_dir or settings.data_dir / "cache" / "embeddings",
                      catalogue=catalogue)
    registry.gate = ModelGate(settings.gate, datasets, trainer.score_model)
    return CoreServices(
        store=store,
        sessions=sessions,
        receiver=ImageReceiver(
            store, sessions, max_bytes=settings.max_upload_bytes, val_percent=settings.val_percent,
            near_dup_bits=settings.near_dup_bits, upload_expiry_s=settings.upload_expiry_s,
        ),
        datasets=datasets,
        registry=registry,
        catalogue=catalogue,
        trainer=trainer,
        site_tokens=settings.site_tokens,
        retention_days=settings.retention_days,
    )


def publish_desired_state(
    services: CoreServices, board: SiteBoard, feed: CatalogueFeed
) -> None:
    """At start, make the KV buckets say what the database says (blocking: a worker thread)."""
    registry = services.registry
    canary = registry.canary()
    production = registry.production()
    board.sync(production.published() if production else None,
               canary.published() if canary else None,
               canary.canary_sites if canary else [])
    feed.sync(services.catalogue.list())


async def serve_core(settings: CoreSettings) -> None:
    server = EmbeddedNats(core_nats_config(settings), work_dir=Path(settings.data_dir) / "nats")
    server.start()  # in this thread: the server is tied to the thread that starts it
    client = await nats.connect(server.client_url, max_reconnect_attempts=-1)
    try:
        deploy, catalogue = await open_buckets(client.jetstream())
        board, feed = SiteBoard(deploy), CatalogueFeed(catalogue)
        services = build_core_services(settings, board, feed)
        await asyncio.to_thread(publish_desired_state, services, board, feed)
        app = create_core_app(services)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.http_port, log_config=None, access_log=False
        )
        log.info("core up", http=settings.http_url, nats=server.client_url)
        await uvicorn.Server(config).serve()
    finally:
        await client.drain()
        server.stop()
