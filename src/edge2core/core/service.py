"""`edge2core core up`: wire the core's parts together and serve them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import uvicorn
from nats.aio.client import Client as NatsClient

from edge2core.common.events import MODELS_SUBJECT, ModelPublished
from edge2core.common.logging import get_logger
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.signing import Signer
from edge2core.config import CoreSettings
from edge2core.core import storage
from edge2core.core.api import CoreServices, create_core_app
from edge2core.core.catalogue import Catalogue
from edge2core.core.datasets import DatasetStore
from edge2core.core.gate import ModelGate
from edge2core.core.receiver import ImageReceiver
from edge2core.core.registry import ModelRegistry
from edge2core.core.trainer import Trainer

log = get_logger(__name__)


class ModelAnnouncer:
    """Tells every edge site, over NATS, which model version is now in production.

    Called from worker threads (training runs in one), so it hands the publish to the loop.
    """

    def __init__(self, client: NatsClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def __call__(self, published: ModelPublished) -> None:
        payload = published.model_dump_json().encode()
        asyncio.run_coroutine_threadsafe(self._client.publish(MODELS_SUBJECT, payload), self._loop)
        log.info("model announced", version=published.version)


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
    settings: CoreSettings, announcer: ModelAnnouncer | None = None
) -> CoreServices:
    sessions = storage.database(settings)  # Alembic upgrade to the newest schema
    store = storage.object_store(settings)  # local directory or S3, by object_store_url
    datasets = DatasetStore(store, sessions)
    registry = ModelRegistry(store, sessions, announcer or (lambda _m: None),
                             signer=Signer.load_or_create(settings.data_dir / "keys"))
    trainer = Trainer(datasets, store, registry, threads=settings.training_threads,
                      cache_dir=settings.embedding_cache_dir or settings.data_dir / "cache" / "embeddings",
                      catalogue=Catalogue(sessions))
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
        catalogue=Catalogue(sessions),
        trainer=trainer,
        site_tokens=settings.site_tokens,
        retention_days=settings.retention_days,
    )


async def serve_core(settings: CoreSettings) -> None:
    server = EmbeddedNats(core_nats_config(settings), work_dir=Path(settings.data_dir) / "nats")
    server.start()  # in this thread: the server is tied to the thread that starts it
    client = await nats.connect(server.client_url, max_reconnect_attempts=-1)
    try:
        services = build_core_services(
            settings, ModelAnnouncer(client, asyncio.get_running_loop())
        )
        if (current := services.registry.production()) is not None:
            await client.publish(MODELS_SUBJECT, current.published().model_dump_json().encode())
        app = create_core_app(services)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.http_port, log_config=None, access_log=False
        )
        log.info("core up", http=settings.http_url, nats=server.client_url)
        await uvicorn.Server(config).serve()
    finally:
        await client.drain()
        server.stop()
