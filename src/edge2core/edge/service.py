"""`edge2core edge up`: one site's broker, doors, spool, forwarder, model agent and API."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import nats
import uvicorn
from nats.aio.client import Client as NatsClient

from edge2core.common import topics
from edge2core.common.background import supervised
from edge2core.common.events import (
    PhotoForwarded,
    SiteModelReport,
    events_subject,
    site_report_subject,
)
from edge2core.common.logging import get_logger
from edge2core.common.metrics import snapshot
from edge2core.common.nats_server import EmbeddedNats
from edge2core.config import EdgeSettings
from edge2core.edge.api import create_edge_app
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.broker_config import SiteAccess, edge_nats_config, mqtt_endpoint, site_access
from edge2core.edge.broker_watch import watch_auth_failures
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.dedup import NearDuplicateWindow
from edge2core.edge.faces import (
    FaceDetectorUnavailable,
    FaceRedactor,
    load_default_detector,
)
from edge2core.edge.forwarder import EventSink, Forwarder
from edge2core.edge.gateway import Gateway, MqttHandlers
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
    core = CoreClient(
        settings.core_url, settings.token, resumable_above=settings.resumable_above_bytes
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
    endpoint = mqtt_endpoint(settings, access)
    subs = topics.subscriptions(settings.site)
    handlers = MqttHandlers(gateway, DeadLetters(settings.data_dir / "dead-letters"))
    # Two connections, two network threads: a burst of captures never delays an answer.
    # Captures: QoS 1, persistent session, acked once spooled. Recognition requests: QoS 0 on a
    # clean session (worthless after a restart), handed from the network thread straight to
    # the gateway's inference pool, which HTTP requests share.
    doors = [
        MqttDoor(
            endpoint,
            private_client_id(settings.data_dir, f"e2c-{settings.site}-capture"),
            [subs["kiosk"]],
            handlers.on_capture,
            on_poison=handlers.on_capture_poison,
            workers=settings.capture_workers,
        ),
        MqttDoor(
            endpoint,
            private_client_id(settings.data_dir, f"e2c-{settings.site}-recognize"),
            [subs["shopper"]],
            handlers.on_recognize,
            qos=0,
            on_poison=handlers.on_recognize_poison,
            replay_retained=False,
        ),
    ]
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


async def serve_edge(settings: EdgeSettings) -> None:
    access = site_access(settings)
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
        **({"user": internal.user, "password": internal.password} if internal else {}),
    )
    parts = build_edge_parts(settings, await event_sink(client, settings.site),
                             site_reporter(client, settings.token))
    await parts.agent.load_last_good()
    doors = await asyncio.to_thread(start_doors, settings, parts.gateway, access)
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
    app = create_edge_app(
        parts.gateway,
        settings.site,
        lambda: status_report(settings, parts),
        settings.max_bytes,
        devices=access.devices,
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.http_port, log_config=None, access_log=False
    )
    log.info("edge up", site=settings.site, http=settings.http_url, mqtt=settings.mqtt_port,
             mqtt_ws=settings.mqtt_ws_port)
    try:
        await uvicorn.Server(config).serve()
    finally:
        for task in tasks:
            task.cancel()
        sweeper.stop()
        for door in doors:
            door.stop()
        parts.gateway.close()
        await client.drain()
        await parts.core.aclose()
        parts.spool.close()
        if auth is not None:
            auth.stop()
        server.stop()
