"""`edge2core core up`: wire the core's parts together and serve them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import uvicorn
from nats.aio.msg import Msg
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.background import supervised
from edge2core.common.events import SITE_REPORTS, SiteModelReport
from edge2core.common.logging import get_logger
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig, NatsUser
from edge2core.common.products import Product
from edge2core.common.signing import Signer
from edge2core.config import AutomationPolicy, CoreSettings
from edge2core.core.api.app import create_core_app
from edge2core.core.api.deps import CoreServices
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetStore
from edge2core.core.curate.governance import Governance
from edge2core.core.curate.labelling import LabellingQueue
from edge2core.core.db import storage
from edge2core.core.deliver.deployments import (
    CatalogueFeed,
    DeploySink,
    SiteBoard,
    open_buckets,
)
from edge2core.core.deliver.gate import ModelGate
from edge2core.core.deliver.registry import ModelRegistry
from edge2core.core.deliver.site_reports import SiteReports, report_trusted
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.uploads import ResumableUploads
from edge2core.core.loop.automation import LearningLoop
from edge2core.core.loop.drift import DriftWatch
from edge2core.core.train.embedding_cache import EmbeddingCache
from edge2core.core.train.on_demand import TrainerOnDemand

if TYPE_CHECKING:  # train/run brings PyTorch: imported where the trainer is built
    from edge2core.core.train.run import Trainer

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
        # With site tokens, a site's leaf link logs in as the site, with its upload token.
        leafnode_users=tuple(NatsUser(site, token) for site, token in settings.site_tokens.items()),
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
    wake = threading.Event()  # the learning loop looks again: a catalogue change, an arrival
    catalogue = Catalogue(sessions, on_change=_both(on_catalogue_change, lambda _products: wake.set()))
    # The gate scores with the trainer, and the trainer registers into the registry: the
    # gate's scorer looks the trainer (made just below) up only when it runs.
    gate = ModelGate(settings.gate, datasets, lambda model, entries: trainer.score_model(model, entries))
    registry = ModelRegistry(store, sessions, sites,
                             signer=Signer.load_or_create(settings.data_dir / "keys"), gate=gate)

    def build_trainer(cache: EmbeddingCache) -> Trainer:  # on first use: it loads PyTorch
        from edge2core.core.train.run import Trainer

        return Trainer(datasets, store, registry, threads=settings.training_threads,
                       cache=cache, catalogue=catalogue)

    trainer = TrainerOnDemand(build_trainer, EmbeddingCache(settings.resolved_embedding_cache_dir))
    loop = learning_loop(settings.automation, sessions, catalogue, datasets, registry, trainer, wake)
    receiver = ImageReceiver(
        store, sessions, max_bytes=settings.max_upload_bytes, val_percent=settings.val_percent,
        near_dup_bits=settings.near_dup_bits,
        on_stored=lambda record: wake.set() if record.sku else None,  # a labelled arrival
    )
    uploads = ResumableUploads(receiver, store.staging_dir() / "uploads",
                               expiry_s=settings.upload_expiry_s)

    def forget(ids: list[str]) -> None:  # erased photos: no near-duplicate, no embedding
        receiver.near_dups.invalidate()
        trainer.cache.purge(ids)

    governance = Governance(store, sessions, retention_days=settings.retention_days,
                            uploads=uploads, on_erased=forget)
    return CoreServices(
        store=store,
        sessions=sessions,
        receiver=receiver,
        uploads=uploads,
        datasets=datasets,
        labelling=LabellingQueue(sessions, catalogue),
        governance=governance,
        catalogue=catalogue,
        audit=loop.audit,
        trainer=trainer,
        registry=registry,
        reports=loop.reports,
        loop=loop,
        site_tokens=settings.site_tokens,
        admin_token=settings.admin_token,
    )


def learning_loop(policy: AutomationPolicy, sessions: sessionmaker[Session], catalogue: Catalogue,
                  datasets: DatasetStore, registry: ModelRegistry, trainer: TrainerOnDemand,
                  wake: threading.Event) -> LearningLoop:
    drift = DriftWatch(sessions, trainer.score_model, window=policy.drift_window,
                       min_photos=policy.drift_min_photos)
    return LearningLoop(policy, sessions, catalogue, datasets, registry, trainer.train,
                        AuditLog(sessions), SiteReports(), drift=drift, wake=wake)


def _both(first: Callable[[list[Product]], None] | None,
          second: Callable[[list[Product]], None]) -> Callable[[list[Product]], None]:
    def call(products: list[Product]) -> None:
        if first is not None:
            first(products)
        second(products)

    return call


def publish_desired_state(
    services: CoreServices, board: SiteBoard, feed: CatalogueFeed
) -> None:
    """Make the KV buckets say what the database says (blocking: a worker thread), at start
    and then now and again: a write lost to a broker hiccup is repaired."""
    registry = services.registry
    with registry.lock:
        canary = registry.canary()
        production = registry.production()
        board.sync(production.published() if production else None,
                   canary.published() if canary else None,
                   canary.canary_sites if canary else [])
    with services.catalogue.publishing:
        feed.sync(services.catalogue.list())


async def resync_every(services: CoreServices, board: SiteBoard, feed: CatalogueFeed,
                       every_s: float) -> None:
    async def resync() -> None:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(publish_desired_state, services, board, feed)

    await supervised("kv-resync", resync, delay_s=0.0)  # a failed pass waits for the next


async def apply_retention_every(services: CoreServices, every_s: float) -> None:
    """The retention rules, at start and then every `every_s`: no cron job to forget."""

    async def apply() -> None:
        reports = await asyncio.to_thread(services.governance.apply_retention)
        erased = sum(r.images for r in reports)
        if erased:
            log.info("retention applied", images=erased)
        await asyncio.sleep(every_s)

    await supervised("retention", apply, delay_s=every_s)


def _on_site_report(
    reports: SiteReports, site_tokens: dict[str, str],
) -> Callable[[Msg], Awaitable[None]]:
    async def on_report(msg: Msg) -> None:
        try:
            report = SiteModelReport.model_validate_json(msg.data)
        except ValueError:
            log.warning("malformed site report ignored", subject=msg.subject)
            return
        if not report_trusted(report, msg.subject, site_tokens):
            log.warning("site report ignored: not from that site", subject=msg.subject,
                        site=report.site)
            return
        reports.record(report)

    return on_report


async def serve_core(settings: CoreSettings) -> None:
    server = EmbeddedNats(core_nats_config(settings), work_dir=Path(settings.data_dir) / "nats")
    server.start()  # in this thread: the server is tied to the thread that starts it
    client = await nats.connect(server.client_url, max_reconnect_attempts=-1)
    tasks: list[asyncio.Task[None]] = []
    try:
        deploy, catalogue = await open_buckets(client.jetstream())
        board, feed = SiteBoard(deploy), CatalogueFeed(catalogue)
        services = build_core_services(settings, board, feed)
        await asyncio.to_thread(publish_desired_state, services, board, feed)
        await client.subscribe(SITE_REPORTS,
                               cb=_on_site_report(services.reports, settings.site_tokens))
        tasks.append(asyncio.create_task(resync_every(services, board, feed, settings.kv_resync_s)))
        if settings.automation.enabled:
            tasks.append(asyncio.create_task(services.loop.run()))
        if settings.retention_days:
            tasks.append(asyncio.create_task(apply_retention_every(services, settings.retention_every_s)))
        app = create_core_app(services)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.http_port, log_config=None, access_log=False
        )
        log.info("core up", http=settings.http_url, nats=server.client_url)
        await uvicorn.Server(config).serve()
    finally:
        for task in tasks:
            task.cancel()
        await client.drain()
        server.stop()
