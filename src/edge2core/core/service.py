"""`edge2core core up`: wire the core's parts together and serve them."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import uvicorn
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.background import restart_when_dead, supervised
from edge2core.common.events import SITE_REPORTS, SiteModelReport
from edge2core.common.leaf_permissions import site_publish, site_subscribe
from edge2core.common.logging import get_logger
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig, NatsUser
from edge2core.common.products import Product
from edge2core.common.signing import Signer
from edge2core.common.site_status import SITE_STATUS
from edge2core.common.site_tokens import leaf_user, tokens_of
from edge2core.common.tls import TlsFiles, prepare_core_tls
from edge2core.common.tls_http import uvicorn_tls_options
from edge2core.config import AutomationPolicy, CoreSettings
from edge2core.core.api.access import SCOPES
from edge2core.core.api.app import create_core_app
from edge2core.core.api.deps import CoreServices
from edge2core.core.api.token_store import TokenStore
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
from edge2core.core.deliver.site_status import on_site_status
from edge2core.core.ingest.direct import open_direct_uploads
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.staging import locks_for, staging_for
from edge2core.core.ingest.uploads import ResumableUploads
from edge2core.core.lease import LOOP_LEASE, SCHEDULER_LEASE, Job, Lease, hold_and_run, process_id
from edge2core.core.loop.automation import LearningLoop
from edge2core.core.loop.drift import DriftWatch
from edge2core.core.nats_cluster import cluster_config, server_name, wait_for_jetstream
from edge2core.core.tls_wiring import core_leaf_tls, watch_core_tls
from edge2core.core.train.embedding_cache import EmbeddingCache
from edge2core.core.train.on_demand import TrainerOnDemand
from edge2core.web.auth.users import UserStore

if TYPE_CHECKING:  # train/run brings PyTorch: imported where the trainer is built
    from edge2core.core.train.run import Trainer

log = get_logger(__name__)


def core_nats_config(settings: CoreSettings, tls: TlsFiles | None = None,
                     internal: NatsUser | None = None) -> NatsServerConfig:
    """`tls`: the leaf listener takes only sites with a certificate from the CA (mutual TLS),
    pinned to the unrevoked, unexpired ones in the CA folder's `sites/` when it has them.

    With site tokens, each site's leaf link logs in as the site with its token, as a user of
    the server whose permissions keep it to its own subjects (`common/leaf_permissions`), and
    the core's own clients log in as `internal` (required then)."""
    users: tuple[NatsUser, ...] = ()
    if settings.site_tokens:
        if internal is None:
            raise ValueError("with site tokens the core's broker needs an internal user")
        domain = settings.jetstream_domain
        # One user per token: during a rotation ("OLD,NEW") both log in as the site.
        users = (internal, *(NatsUser(leaf_user(site, token), token, site_publish(site, domain),
                                      site_subscribe(site))
                             for site, value in settings.site_tokens.items() for token in tokens_of(value)))
    return NatsServerConfig(
        name=server_name(settings),  # a cluster's node: its own name
        store_dir=settings.data_dir / "nats" / "jetstream",
        host=settings.host,
        client_port=settings.nats_port,
        http_port=settings.nats_http_port,
        jetstream_domain=settings.jetstream_domain,
        leafnode_port=settings.leafnode_port,
        users=users,
        tls=core_leaf_tls(tls),
        cluster=cluster_config(settings),
    )


def build_core_services(
    settings: CoreSettings,
    sites: DeploySink | None = None,
    on_catalogue_change: Callable[[list[Product]], None] | None = None,
    signer: Signer | None = None,
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
                             signer=signer or Signer.load_or_create(settings.data_dir / "keys"), gate=gate)

    def build_trainer(cache: EmbeddingCache) -> Trainer:  # on first use: it loads PyTorch
        from edge2core.core.train.ray_runner import job_runner
        from edge2core.core.train.run import Trainer

        return Trainer(datasets, store, registry, threads=settings.training_threads,
                       cache=cache, catalogue=catalogue, runner=job_runner(settings))

    trainer = TrainerOnDemand(build_trainer, EmbeddingCache(settings.resolved_embedding_cache_dir),
                              AuditLog(sessions))
    loop = learning_loop(settings.automation, sessions, catalogue, datasets, registry, trainer, wake)
    receiver = ImageReceiver(
        store, sessions, max_bytes=settings.max_upload_bytes, val_percent=settings.val_percent,
        near_dup_bits=settings.near_dup_bits,
        on_stored=lambda record: wake.set() if record.sku else None,  # a labelled arrival
    )
    # With S3 and PostgreSQL, any core process can take any request of any upload.
    uploads = ResumableUploads(receiver, staging_for(store, store.staging_dir() / "uploads"),
                               expiry_s=settings.upload_expiry_s,
                               locks=locks_for(settings.resolved_database_url))

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
        site_rate=settings.site_rate,
        api_tokens=TokenStore(settings.data_dir / "api-tokens.json", SCOPES),
        direct=open_direct_uploads(  # None unless the store is S3
            receiver, store, enabled=settings.direct_uploads, expiry_s=settings.upload_expiry_s,
            presign_endpoint_url=settings.s3_presign_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key),
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


async def mark_interrupted(services: CoreServices) -> None:
    """A run that started and never ended died with its process: say so in the audit log."""
    if interrupted := await asyncio.to_thread(services.trainer.mark_interrupted):
        log.warning("training runs interrupted by the last stop", runs=interrupted)


def singleton_jobs(settings: CoreSettings, services: CoreServices, board: SiteBoard,
                   feed: CatalogueFeed) -> list[asyncio.Task[None]]:
    """The learning loop and the scheduler (KV re-sync, retention), each run by whichever core
    process holds its lease (`core.lease`)."""
    engine = services.sessions.kw["bind"]
    # SQLite is one core process's: a restarted core takes its own lease back at once.
    holder = (f"sqlite:{settings.data_dir.resolve()}" if engine.url.get_backend_name() == "sqlite"
              else process_id())
    scheduled: list[Job] = [("kv-resync", lambda: resync_every(services, board, feed, settings.kv_resync_s))]
    if not holder.startswith("sqlite:"):
        # Several processes: runs are marked by the scheduler's new holder (often taking over
        # from a process that died), not by every process that starts.
        scheduled.append(("interrupted-runs", lambda: mark_interrupted(services)))
    if settings.retention_days:
        scheduled.append(("retention", lambda: apply_retention_every(services, settings.retention_every_s)))
    jobs = [(SCHEDULER_LEASE, scheduled)]
    if settings.automation.enabled:
        jobs.append((LOOP_LEASE, [("learning-loop", services.loop.run)]))
    return [asyncio.create_task(hold_and_run(Lease(engine, name, holder), named))
            for name, named in jobs]


GRACEFUL_SHUTDOWN_S = 5  # seconds
SITE_KEEPALIVE_S = 75  # seconds an idle HTTPS connection stays open (uvicorn's default: 5)
CLUSTER_WAIT_S = 600  # for the other nodes of a NATS cluster to come up; then exit (restarted)


async def serve_core(settings: CoreSettings) -> None:
    tls = prepare_core_tls(settings.tls_dir, settings.data_dir, settings.host, plaintext=settings.plaintext)
    # The core's own clients: a secret made afresh per run, never leaving this process (and the
    # 0600 server config).
    internal = NatsUser("e2c-core-internal", secrets.token_urlsafe(24))
    server = EmbeddedNats(core_nats_config(settings, tls, internal), work_dir=Path(settings.data_dir) / "nats")
    server.start()  # in this thread: the server is tied to the thread that starts it
    client = await nats.connect(server.client_url, max_reconnect_attempts=-1,
                                **({"user": internal.user, "password": internal.password}
                                   if settings.site_tokens else {}))
    tasks: list[asyncio.Task[None]] = []
    try:
        if settings.nats_cluster is not None:  # a majority of the nodes must be up first
            await wait_for_jetstream(client.jetstream(), CLUSTER_WAIT_S)
        deploy, catalogue = await open_buckets(client.jetstream(), settings.resolved_jetstream_replicas)
        board = SiteBoard(deploy)
        signer = Signer.load_or_create(settings.data_dir / "keys")  # models and the catalogue
        feed = CatalogueFeed(catalogue, signer)
        services = build_core_services(settings, board, feed, signer)
        if services.sessions.kw["bind"].url.get_backend_name() == "sqlite":  # one core process
            await mark_interrupted(services)
        await asyncio.to_thread(publish_desired_state, services, board, feed)
        await client.subscribe(SITE_REPORTS,
                               cb=_on_site_report(services.reports, settings.site_tokens))
        await client.subscribe(SITE_STATUS,
                               cb=on_site_status(services.reports.fleet, settings.site_tokens))
        tasks.append(asyncio.create_task(supervised("broker", lambda: restart_when_dead(
            "nats-server", lambda: server.is_running, server.start,
            healthy=server.answers_healthy, stop=server.stop))))
        # Once per deployment, however many core processes serve the API: under leases.
        tasks += singleton_jobs(settings, services, board, feed)
        app = create_core_app(services, UserStore(settings.data_dir / "users.json"))
        http_tls, tls_watcher = watch_core_tls(
            settings, tls, lambda: server.reload(core_nats_config(settings, tls, internal)))
        tasks.append(asyncio.create_task(supervised("tls", tls_watcher.run)))
        config = uvicorn.Config(
            app, host=settings.host, port=settings.http_port, log_config=None, access_log=False,
            # Stopping waits for requests in flight, not for ever: a site's keep-alive HTTPS
            # connection (or a model download) must not hold a service manager's stop.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **uvicorn_tls_options(http_tls),
            # Longer than the sites' own (`edge/core_client`): a site's idle connection is
            # closed by the site, never under a request it is sending (bench/fleet.py).
            timeout_keep_alive=SITE_KEEPALIVE_S,
        )
        log.info("core up", http=settings.http_url, nats=server.client_url)
        await uvicorn.Server(config).serve()
    finally:
        for task in tasks:
            task.cancel()
        await _close_client(client)
        server.stop()


async def _close_client(client: NatsClient, drain_s: float = 3.0) -> None:
    """Drain the core's own NATS client, but not for longer than `drain_s`: a drain waits for
    every subscription's pending callbacks (30 s by default), and a service manager stopping
    the core should not wait on a site's report in flight."""
    try:
        await asyncio.wait_for(client.drain(), drain_s)
    except (TimeoutError, nats.errors.Error) as exc:
        log.warning("NATS client not drained in time; closing it", error=repr(exc))
        await client.close()

