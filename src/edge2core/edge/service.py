"""`edge2core edge up`: one site's broker, doors, spool, forwarder, model agent and API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from functools import partial

import nats
from nats.aio.client import Client as NatsClient

from edge2core.common import topics
from edge2core.common.background import restart_when_dead, supervised
from edge2core.common.events import (
    PhotoForwarded,
    SiteModelReport,
    events_subject,
    site_report_subject,
    utcnow,
)
from edge2core.common.leaf_permissions import site_inbox
from edge2core.common.logging import get_logger
from edge2core.common.metrics import snapshot
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.rate_limit import RateLimiter
from edge2core.common.tls import prepare_site_tls
from edge2core.common.tls_http import uvicorn_tls_options
from edge2core.config import EdgeSettings
from edge2core.edge.api import create_edge_app
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.broker_config import (
    SiteAccess,
    core_link_tls,
    edge_nats_config,
    mqtt_endpoint,
    site_access,
)
from edge2core.edge.broker_watch import watch_auth_failures
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.dedup import NearDuplicateWindow
from edge2core.edge.doors.mqtt import mqtt_doors_for
from edge2core.edge.doors.plugin import DoorContext, EventPublisher
from edge2core.edge.doors.registry import SiteDoors
from edge2core.edge.faces import (
    FaceDetectorUnavailable,
    FaceRedactor,
    load_default_detector,
)
from edge2core.edge.forwarder import EventSink, Forwarder
from edge2core.edge.gateway import Gateway
from edge2core.edge.golden import GoldenSet
from edge2core.edge.inference import Recognizer
from edge2core.edge.inference_pool import InferencePool
from edge2core.edge.intake import Intake
from edge2core.edge.kv_follower import LeafLink
from edge2core.edge.model_agent import ModelAgent, Reporter
from edge2core.edge.model_trust import ModelTrust
from edge2core.edge.mqtt_door import MqttDoor, private_client_id
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.quality import QualityAction, QualityPolicy
from edge2core.edge.retained_sweeper import RetainedSweeper
from edge2core.edge.shaping import TokenBucket, parse_windows
from edge2core.edge.spool import Spool, WhenFull
from edge2core.edge.status_reporter import STATUS_EVERY_S, collect_status, report_status_every
from edge2core.edge.tls_wiring import watch_site_tls
from edge2core.web.site.router import SitePages, mount_site_pages

__all__ = ["EdgeParts", "SiteAccess", "build_edge_parts", "edge_nats_config", "serve_edge",
           "site_access", "start_doors", "start_sweeper", "status_report"]

log = get_logger(__name__)

EVENTS_STREAM = "E2C_EVENTS"


@dataclass
class EdgeParts:
    spool: Spool
    catalogue: CatalogueReplica
    recognizer: Recognizer
    gateway: Gateway
    core: CoreClient
    forwarder: Forwarder
    agent: ModelAgent


def face_redactor(settings: EdgeSettings) -> FaceRedactor | None:
    """The site's privacy policy: with blur_faces on, no detector means no start."""
    if not settings.blur_faces:
        log.warning("face blurring is OFF for this site: photos leave with faces visible")
        return None
    try:
        return FaceRedactor(load_default_detector())
    except FaceDetectorUnavailable as exc:
        raise SystemExit(f"cannot start site {settings.site!r}: {exc} (or set blur_faces=false)") from exc


def build_edge_parts(settings: EdgeSettings, on_forwarded: EventSink | None = None,
                     reporter: Reporter | None = None) -> EdgeParts:
    """The site's parts; `on_forwarded` and `reporter` (events and model reports over NATS)
    are left out where no broker runs."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    policy = PreparePolicy(
        max_bytes=settings.max_bytes,
        max_pixels=settings.max_pixels,
        long_side=settings.long_side,
        jpeg_quality=settings.jpeg_quality,
        quality=QualityPolicy(action=QualityAction(settings.quality_action)),
    )
    spool = Spool(data / "spool", settings.spool_budget_bytes, WhenFull(settings.when_full))
    catalogue = CatalogueReplica(data / "catalogue.json")
    golden = GoldenSet(data / "golden")
    recognizer = Recognizer(
        catalogue,
        threads=settings.inference_threads,
        unrecognised_below=settings.unrecognised_below,
        top_k=settings.top_k,
        limits=policy.limits,
        golden=golden,
    )
    link_tls = core_link_tls(settings)
    core = CoreClient(
        settings.core_url, settings.token, resumable_above=settings.resumable_above_bytes,
        tls=link_tls[0] if link_tls else None, direct_uploads=settings.direct_uploads,
    )
    forwarder = Forwarder(
        spool,
        core,
        quarantine_dir=data / "quarantine",
        concurrency=settings.forward_concurrency,
        bucket=TokenBucket(settings.bandwidth_limit_bytes_s),
        windows=parse_windows(settings.upload_windows),
        on_forwarded=on_forwarded,
    )
    intake = Intake(
        settings.site,
        policy,
        spool,
        on_spooled=forwarder.wake,
        redactor=face_redactor(settings),
        golden=golden,
        near_duplicates=NearDuplicateWindow(
            settings.near_duplicate_window_s, settings.near_duplicate_max_distance
        ),
    )
    trust = ModelTrust(
        data / "model-signing-key.pub",
        settings.model_public_key,
        allow_unsigned=settings.allow_unsigned_models,
    )
    agent = ModelAgent(
        core, recognizer, catalogue, data / "models", site=settings.site,
        poll_s=settings.model_poll_s, trust=trust, reporter=reporter,
    )
    gateway = Gateway(intake, recognizer, InferencePool.for_settings(recognizer, settings))
    gateway.limiter = RateLimiter(settings.device_rate, "device")
    return EdgeParts(spool, catalogue, recognizer, gateway, core, forwarder, agent)


def status_report(settings: EdgeSettings, parts: EdgeParts) -> dict:
    spool = parts.spool.stats()
    model = parts.recognizer.model
    return {
        "site": settings.site,
        "model_version": model.version if model else None,
        "model_classes": len(model.classes) if model else 0,
        "catalogue_products": len(parts.catalogue),
        "spool": {
            "items": spool.items,
            "bytes": spool.bytes,
            "budget_bytes": spool.budget_bytes,
            "oldest_age_s": spool.oldest_age_s,
            "evicted": spool.evicted,
        },
        "forwarded_bytes_per_s": round(parts.forwarder.recent_bytes_per_s(), 1),
        "counters": snapshot(),
    }


def start_doors(
    settings: EdgeSettings, gateway: Gateway, access: SiteAccess | None = None
) -> list[MqttDoor]:
    """The MQTT doors alone, started (tests and benches; `edge up` starts every door through
    its plugin, `edge2core.edge.doors`)."""
    doors = mqtt_doors_for(settings, gateway, access)
    for door in doors:
        door.start()
    return doors


def start_sweeper(settings: EdgeSettings, access: SiteAccess | None = None) -> RetainedSweeper:
    subs = topics.subscriptions(settings.site)
    sweeper = RetainedSweeper(
        mqtt_endpoint(settings, access),
        private_client_id(settings.data_dir, f"e2c-{settings.site}-sweeper"),
        [subs["kiosk"], subs["shopper"]],
        every_s=settings.retained_sweep_s,
    )
    sweeper.start()
    return sweeper


async def event_sink(client: NatsClient, site: str) -> EventSink:
    js = client.jetstream()
    with contextlib.suppress(Exception):
        await js.add_stream(name=EVENTS_STREAM, subjects=["e2c.events.>"])

    async def publish(event: PhotoForwarded) -> None:
        try:
            await js.publish(events_subject(site, "photo.forwarded"), event.model_dump_json().encode())
        except Exception as exc:  # events are informative; the HTTP upload is the truth
            log.warning("event publish failed", error=repr(exc))

    return publish


def site_reporter(client: NatsClient, token: str) -> Reporter:
    """Tell the core (over the leaf link) what this site did with a model version, signed
    with the site's token."""

    async def report(event: SiteModelReport) -> None:
        signed = event.signed(token)
        await client.publish(site_report_subject(event.site), signed.model_dump_json().encode())

    return report


async def watch_devices(auth: BrokerAuth, every_s: float = 2.0) -> None:
    """Apply `edge2core edge devices add/revoke` to the running broker within seconds.

    A device added is admitted at once (the auth service reads the registry on each connect);
    this closes connections the registry no longer allows: revoked or re-issued devices, client
    ids that became another device's. The server is never reloaded: any reload closes every
    connection the auth callout admitted.
    """
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(auth.enforce)


def event_publisher(client: NatsClient, site: str) -> EventPublisher:
    """For doors' threads: publish a site event on the NATS client's loop, without waiting."""
    loop = asyncio.get_running_loop()

    def publish(name: str, payload: bytes) -> None:
        asyncio.run_coroutine_threadsafe(client.publish(events_subject(site, name), payload), loop)

    return publish


async def until_signalled() -> None:
    """Until SIGINT or SIGTERM (what uvicorn's own loop used to wait for)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_edge(settings: EdgeSettings) -> None:
    access = site_access(settings).secured(
        prepare_site_tls(settings.tls_dir, settings.data_dir, settings.site, plaintext=settings.plaintext),
        settings.device_certs)
    if access.devices is not None and not access.devices.list():
        log.warning("device identity is on but no device is registered; add one with "
                    "`edge2core edge devices add --data-dir DIR ID --role kiosk`")
    # The embedded server always runs (JetStream, leaf link); an external broker only
    # replaces it as the devices' MQTT door.
    server = EmbeddedNats(edge_nats_config(settings, access), work_dir=settings.data_dir / "nats")
    server.start()  # in this thread: the server is tied to the thread that starts it
    auth = access.broker_auth(settings.site, server.client_url)
    if auth is not None:  # before anything else: devices reconnecting now need it
        await asyncio.to_thread(auth.start)
    internal = access.internal
    client = await nats.connect(
        server.client_url,
        max_reconnect_attempts=-1,
        # The core forwards to this site only answers on its own prefix (leaf permissions).
        inbox_prefix=site_inbox(settings.site),
        **({"user": internal.user, "password": internal.password} if internal else {}),
    )
    parts = build_edge_parts(settings, await event_sink(client, settings.site),
                             site_reporter(client, settings.token))
    await parts.agent.load_last_good()
    sweeper = await asyncio.to_thread(start_sweeper, settings, access)
    # The core's desired state (model per site, catalogue) lives in its JetStream domain,
    # reached over the leaf link; the link's ups and downs are read off our own broker.
    link = LeafLink(server.config.monitor_url) if settings.core_leaf_url else None
    core_js = client.jetstream(domain=settings.core_jetstream_domain) if link else None
    tasks = [
        asyncio.create_task(supervised("forwarder", parts.forwarder.run), name="forwarder"),
        asyncio.create_task(
            supervised("model-agent", lambda: parts.agent.run(core_js, link)), name="model-agent"
        ),
    ]
    # The devices' broker comes back by itself after a kill -9 or a full disk (sessions in JetStream).
    tasks.append(asyncio.create_task(supervised("broker", lambda: restart_when_dead(
        "nats-server", lambda: server.is_running, server.start,
        healthy=server.answers_healthy, stop=server.stop)), name="broker"))
    if link is not None:
        tasks.append(asyncio.create_task(supervised("leaf-link", link.run), name="leaf-link"))
    if auth is not None:
        tasks += [
            asyncio.create_task(supervised("devices", lambda: watch_devices(auth)), name="devices"),
            asyncio.create_task(
                supervised(
                    "auth-failures",
                    # The auth service counts its own refusals; this counts the rest once each.
                    lambda: watch_auth_failures(server.config.monitor_url, skip=auth.refused),
                ),
                name="auth-failures",
            ),
        ]
    doors: SiteDoors | None = None  # made below; the status page reads it once it runs

    def app_status() -> dict:
        return {**status_report(settings, parts), "doors": doors.status() if doors else []}

    app = create_edge_app(parts.gateway, settings.site, app_status, settings.max_bytes,
                          devices=access.devices)
    # The people's pages (web/site): shoppers come as guests (own topics and limits).
    guests = access.guests if access.devices is not None else None
    mount_site_pages(app, SitePages(settings.site, parts.catalogue, guests, settings.mqtt_ws_port))
    if guests is not None:
        parts.gateway.admit = guests.allow
    status = partial(collect_status, settings.site, utcnow(), parts.spool, parts.recognizer,
                     parts.catalogue)
    tasks.append(asyncio.create_task(supervised("status-report", lambda: report_status_every(
        status, client.publish, settings.token, STATUS_EVERY_S)), name="status-report"))
    http_tls, tls_watcher = watch_site_tls(settings, access, server, parts.core.tls)
    tasks.append(asyncio.create_task(supervised("tls", tls_watcher.run), name="tls"))
    # Every door (MQTT, HTTP, AMQP, cameras, folders, plugins) through one interface.
    doors = SiteDoors(DoorContext(
        settings, parts.gateway, DeadLetters(settings.data_dir / "dead-letters"), access,
        status=app_status, publish_event=event_publisher(client, settings.site),
        http_app=app, http_options=uvicorn_tls_options(http_tls)))
    try:
        await asyncio.to_thread(doors.start)  # a door that cannot start stops the site, cleanly
        log.info("edge up", site=settings.site, http=settings.http_url, mqtt=settings.mqtt_port,
                 mqtt_ws=settings.mqtt_ws_port, doors=[d["name"] for d in doors.status()])
        await until_signalled()
    finally:
        for task in tasks:
            task.cancel()
        sweeper.stop()
        doors.stop()
        parts.gateway.close()
        await client.drain()
        await parts.core.aclose()
        parts.spool.close()
        if auth is not None:
            auth.stop()
        server.stop()
