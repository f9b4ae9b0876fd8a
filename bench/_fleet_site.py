"""Several edge sites in one process, for bench/fleet.py.

Each site is built from the parts `edge2core edge up` builds (`build_edge_parts`: spool,
intake, forwarder, catalogue replica, recognizer, model agent with its trust checks) around its
own nats-server (`edge_nats_config`: JetStream, MQTT listener, TLS, a leaf link to the core
logging in as the site with its token), with the same background tasks `serve_edge` runs for
them: the forwarder, the model agent following the core's KV buckets over the leaf link, the
leaf-link watch, signed status reports and model reports. Left out: the doors (no HTTP or MQTT
devices; captures enter through the gateway's capture path, as a door hands them over) and
face blurring. Inference is not exercised beyond each model's warm-up.

    python bench/_fleet_site.py CONFIG.json

CONFIG: {"sites": [{"site", "token", "data_dir", "index"}], "core_url", "core_leaf_url",
"tls_dir", "rate_per_site", "probe_sku"}. Stdout, one JSON object a line: {"event": "ready"},
{"event": "price", "site", "price", "at"} whenever a site's replica changes the probe
product's price, {"event": "stats", ...} on the stdin command `stats`. `quit` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from edge2core.common.background import supervised
from edge2core.common.events import CaptureMeta, PhotoForwarded, Source, utcnow
from edge2core.common.leaf_permissions import site_inbox
from edge2core.common.logging import configure_logging
from edge2core.common.metrics import MODEL_DELIVERY_BYTES
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.net import free_port
from edge2core.common.tls import prepare_site_tls
from edge2core.config import EdgeSettings
from edge2core.edge.kv_follower import LeafLink
from edge2core.edge.service import (
    EdgeParts,
    build_edge_parts,
    edge_nats_config,
    event_sink,
    site_access,
    site_reporter,
)
from edge2core.edge.status_reporter import STATUS_EVERY_S, collect_status, report_status_every
from edge2core.sim.synthetic import render_photo

PHOTO_SIZE = 256  # pixels: a small JPEG (~8 KB) as a kiosk camera frame after the edge's prepare


@dataclass
class Site:
    settings: EdgeSettings
    index: int
    server: EmbeddedNats
    client: NatsClient
    parts: EdgeParts
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    captured: int = 0
    refused: int = 0
    forwarded: int = 0


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def site_settings(spec: dict[str, Any], config: dict[str, Any]) -> EdgeSettings:
    return EdgeSettings(
        site=spec["site"], data_dir=Path(spec["data_dir"]), host="127.0.0.1", token=spec["token"],
        http_port=free_port(), nats_port=free_port(), nats_http_port=free_port(),
        mqtt_port=free_port(), mqtt_ws_port=free_port(),
        core_url=config["core_url"], core_leaf_url=config["core_leaf_url"],
        tls_dir=Path(config["tls_dir"]), plaintext=False, device_auth=False, blur_faces=False,
        near_duplicate_window_s=0,  # every frame is a new photo; the core still dedupes
        doors=[],
    )


async def start_site(spec: dict[str, Any], config: dict[str, Any]) -> Site:
    """One site, as `serve_edge` wires it (less the doors)."""
    settings = site_settings(spec, config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    access = site_access(settings).secured(
        prepare_site_tls(settings.tls_dir, settings.data_dir, settings.site, plaintext=False))
    server = EmbeddedNats(edge_nats_config(settings, access), work_dir=settings.data_dir / "nats")
    server.start()  # on the main thread: the server is tied to the thread that starts it
    client = await nats.connect(server.client_url, max_reconnect_attempts=-1,
                                inbox_prefix=site_inbox(settings.site))
    box: list[Site] = []
    sink = await event_sink(client, settings.site)

    async def on_forwarded(event: PhotoForwarded) -> None:
        box[0].forwarded += 1
        await sink(event)

    parts = build_edge_parts(settings, on_forwarded, site_reporter(client, settings.token))
    await parts.agent.load_last_good()
    site = Site(settings, int(spec["index"]), server, client, parts)
    box.append(site)
    link = LeafLink(server.config.monitor_url)
    core_js = client.jetstream(domain=settings.core_jetstream_domain)
    status = _status_collector(settings, parts)
    name = settings.site
    site.tasks = [
        asyncio.create_task(supervised(f"{name}-forwarder", parts.forwarder.run)),
        asyncio.create_task(supervised(f"{name}-agent", lambda: parts.agent.run(core_js, link))),
        asyncio.create_task(supervised(f"{name}-link", link.run)),
        asyncio.create_task(supervised(f"{name}-status", lambda: report_status_every(
            status, client.publish, settings.token, STATUS_EVERY_S))),
    ]
    return site


def _status_collector(settings: EdgeSettings, parts: EdgeParts) -> Any:
    started = utcnow()
    return lambda: collect_status(settings.site, started, parts.spool, parts.recognizer, parts.catalogue)


def capture(site: Site, n: int) -> None:
    """One camera frame through the gateway's capture path (prepare, spool, wake the forwarder)."""
    data = render_photo(n % 8, site.index * 1_000_000 + n, size=PHOTO_SIZE)
    meta = CaptureMeta(site=site.settings.site, device="cam-1", source=Source.CAMERA)
    try:
        site.parts.gateway.capture(data, meta, door="fleet-bench")
        site.captured += 1
    except Exception:  # a full spool, a rate limit: counted, the load goes on
        site.refused += 1


async def capture_load(sites: list[Site], rate_per_site: float) -> None:
    """A steady, jittered load: each site captures `rate_per_site` photos a second."""
    if rate_per_site <= 0:
        return
    interval = 1.0 / (rate_per_site * len(sites))
    rng = random.Random(sites[0].index)
    loop = asyncio.get_running_loop()
    turn, due = 0, loop.time()
    while True:
        site = sites[turn % len(sites)]
        await asyncio.to_thread(capture, site, turn // len(sites))
        turn += 1
        # Paced on the clock, not after each capture: the rate holds while a capture takes
        # less than the interval (and the process catches up after a slow one).
        due += interval * rng.uniform(0.5, 1.5)
        await asyncio.sleep(max(0.0, due - loop.time()))


async def watch_prices(sites: list[Site], sku: str) -> None:
    """Say when a site's replica changes the probe product's price (the bench times it)."""
    seen: dict[str, float | None] = {}
    while True:
        for site in sites:
            product = site.parts.catalogue.get(sku)
            price = product.price if product else None
            if seen.get(site.settings.site, -1.0) != price:
                seen[site.settings.site] = price
                emit({"event": "price", "site": site.settings.site, "price": price, "at": time.time()})
        await asyncio.sleep(0.02)


def delivered_bytes() -> dict[str, float]:
    """Model bytes this process's sites downloaded, by kind (full, backbone, head)."""
    out: dict[str, float] = {}
    for metric in MODEL_DELIVERY_BYTES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["kind"]] = out.get(sample.labels["kind"], 0.0) + sample.value
    return out


LAG = {"max_s": 0.0}  # the worst lateness of this process's event loop (CPU starvation)


async def watch_loop_lag(every_s: float = 0.5) -> None:
    """How late a timer fires: every site in the process waits that long for anything."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        LAG["max_s"] = max(LAG["max_s"], loop.time() - due)


def stats(sites: list[Site]) -> dict[str, Any]:
    return {"event": "stats", "at": time.time(), "delivered_bytes": delivered_bytes(),
            "loop_lag_max_s": round(LAG["max_s"], 3),
            "captured": sum(s.captured for s in sites),
            "refused": sum(s.refused for s in sites), "forwarded": sum(s.forwarded for s in sites),
            "spooled": sum(s.parts.spool.stats().items for s in sites),
            "models": {s.settings.site: (s.parts.recognizer.model.version if s.parts.recognizer.model else None)
                       for s in sites}}


async def commands(sites: list[Site]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            return
        if line.strip() == "stats":
            emit(stats(sites))


async def stop_site(site: Site) -> None:
    for task in site.tasks:
        task.cancel()
    site.parts.gateway.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(site.client.drain(), 3)
    await site.parts.core.aclose()
    site.parts.spool.close()
    site.server.stop()


async def main(config: dict[str, Any]) -> None:
    sites: list[Site] = []
    try:
        for spec in config["sites"]:
            sites.append(await start_site(spec, config))
        emit({"event": "ready", "sites": [s.settings.site for s in sites]})
        background = [asyncio.create_task(capture_load(sites, float(config["rate_per_site"]))),
                      asyncio.create_task(watch_prices(sites, config["probe_sku"])),
                      asyncio.create_task(watch_loop_lag())]
        await commands(sites)
        for task in background:
            task.cancel()
    finally:
        for site in sites:
            await stop_site(site)


if __name__ == "__main__":
    # stderr: the bench keeps it in worker-NNN.log (INFO shows each site's delivery steps).
    configure_logging(os.environ.get("E2C_FLEET_LOG_LEVEL", "WARNING"))
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
