"""Sites' status reports over a real leaf link (two nats-servers): the core's fleet view sees
a site, loses it while the link is cut, and sees it again with fresh counters once the link
returns."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import nats

from edge2core.common.events import utcnow
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.site_status import SITE_STATUS, SiteStatus
from edge2core.core.deliver.site_status import ONLINE_WITHIN_S, FleetStatus, on_site_status
from edge2core.edge.status_reporter import report_status_every
from tests.integration.test_delivery import LinkSwitch
from tests.support.waiting import until


async def test_a_site_that_was_offline_is_seen_again_when_its_link_returns(tmp_path: Path) -> None:
    core_cfg = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core-js", mqtt=False, websocket=False, leafnode=True,
        jetstream_domain="core")
    core_nats = EmbeddedNats(core_cfg, work_dir=tmp_path / "core-nats").start()
    link = LinkSwitch(int(core_cfg.leafnode_url.rsplit(":", 1)[1]))
    await link.restore()
    edge_cfg = NatsServerConfig.with_free_ports(
        "edge", tmp_path / "edge-js", mqtt=False, websocket=False, jetstream_domain="edge",
        leafnode_remotes=(f"nats-leaf://127.0.0.1:{link.port}",))
    edge_nats = EmbeddedNats(edge_cfg, work_dir=tmp_path / "edge-nats").start()
    core_client = await nats.connect(core_nats.client_url)
    edge_client = await nats.connect(edge_nats.client_url)
    fleet = FleetStatus()
    await core_client.subscribe(SITE_STATUS, cb=on_site_status(fleet, {"s1": "tok"}))
    started, sent = utcnow(), [0]

    def collect() -> SiteStatus:
        sent[0] += 1
        return SiteStatus(site="s1", started_at=started, forwarded=float(sent[0]))

    reporter = asyncio.create_task(report_status_every(collect, edge_client.publish, "tok", 0.1))
    try:
        await until(lambda: fleet.sites(), what="the site's first report")
        assert fleet.sites()[0]["online"]
        await link.cut()
        await asyncio.sleep(0.5)
        seen = fleet.sites()[0]["last_seen"]
        later = utcnow() + timedelta(seconds=ONLINE_WITHIN_S + 1)
        assert not fleet.sites(later)[0]["online"]  # nothing new while cut: it goes offline
        await asyncio.sleep(0.5)
        assert fleet.sites()[0]["last_seen"] == seen
        await link.restore()
        await until(lambda: fleet.sites()[0]["last_seen"] != seen, timeout=30,
                    what="a report after the link returned")
        row = fleet.sites()[0]
        assert row["online"] and row["forward_per_s"] is not None
    finally:
        reporter.cancel()
        await edge_client.close()
        await core_client.close()
        edge_nats.stop()
        core_nats.stop()
