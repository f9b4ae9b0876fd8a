"""A site reads only its own targets: over its leaf link (the core's broker configured as
`core up` configures it, with site tokens; nats-server itself as the site's leaf), the site can
read and watch the deploy bucket's `fleet` key and its own `site.<id>`, and no other site's key
by any route (a watch, a whole-bucket watch, a get), while its real model agent follows its own
targets. TLS is beside the point here (tests/security/test_tls_links.py covers the link's TLS).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.aio.client
import pytest

from edge2core.common.events import DEPLOY_BUCKET, FLEET_KEY, ModelPublished, site_key
from edge2core.common.leaf_permissions import site_inbox
from edge2core.common.nats_config import NatsServerConfig, NatsUser, leaf_url_with_credentials
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.site_tokens import leaf_user
from edge2core.config import CoreSettings
from edge2core.core.deliver.deployments import open_buckets
from edge2core.core.service import core_nats_config
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.inference import Recognizer
from edge2core.edge.kv_follower import LeafLink
from edge2core.edge.kv_key_watch import watch_keys
from edge2core.edge.model_agent import ModelAgent
from tests.support.waiting import until

pytestmark = pytest.mark.integration

TOKENS = {"store-a": "token-of-store-a-0123456789", "store-b": "token-of-store-b-0123456789"}
ME, OTHER = "store-b", "store-a"


def published(version: int) -> bytes:
    return ModelPublished(version=version, sha256=f"{version:064x}", size=1, classes=["A"],
                          url_path=f"/v1/models/{version}/artifact",
                          published_at=datetime(2026, 1, 1, tzinfo=UTC)).model_dump_json().encode()


@dataclass
class Link:
    core: nats.aio.client.Client  # the core's own client
    site: nats.aio.client.Client  # a client of the site's broker, as the site's services are
    leaf: LeafLink


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[Link]:
    internal = NatsUser("e2c-core-internal", "internal-secret-0123456789")
    settings = CoreSettings(data_dir=tmp_path / "core", site_tokens=TOKENS)
    ours = core_nats_config(settings, None, internal)
    core_cfg = NatsServerConfig.with_free_ports(
        "core", tmp_path / "core-js", mqtt=False, websocket=False, leafnode=True,
        jetstream_domain="core", users=ours.users)
    core_nats = EmbeddedNats(core_cfg, work_dir=tmp_path / "core-nats").start()
    assert core_cfg.leafnode_url is not None
    edge_cfg = NatsServerConfig.with_free_ports(
        "edge", tmp_path / "edge-js", mqtt=False, websocket=False, jetstream_domain="edge",
        leafnode_remotes=(leaf_url_with_credentials(core_cfg.leafnode_url, leaf_user(ME, TOKENS[ME]),
                                                    TOKENS[ME]),))
    edge_nats = EmbeddedNats(edge_cfg, work_dir=tmp_path / "edge-nats").start()
    core = await nats.connect(core_nats.client_url, user=internal.user, password=internal.password)
    site = await nats.connect(edge_nats.client_url, inbox_prefix=site_inbox(ME))
    leaf = LeafLink(edge_cfg.monitor_url, every_s=0.1)
    watching = asyncio.create_task(leaf.run())
    try:
        deploy, _catalogue = await open_buckets(core.jetstream())
        kv = await core.jetstream().key_value(DEPLOY_BUCKET)
        await kv.put(FLEET_KEY, published(1))
        await kv.put(site_key(ME), published(2))
        await kv.put(site_key(OTHER), published(3))
        await until(lambda: leaf.up, "the leaf link")
        yield Link(core, site, leaf)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await site.close()
        await core.close()
        edge_nats.stop()
        core_nats.stop()


async def _refused(coro: object) -> bool:
    """Whether an attempt to read fails (the core does not answer what is not allowed)."""
    try:
        await asyncio.wait_for(coro, 15)  # type: ignore[arg-type]
    except Exception:  # no responders / timeout / a JetStream error: not delivered
        return True
    return False


async def test_a_site_reads_its_own_and_the_fleets_targets_and_no_other_sites(link: Link) -> None:
    js = link.site.jetstream(domain="core", timeout=3)
    # Its own key and the fleet's: watched, with their values.
    watcher = await watch_keys(js, DEPLOY_BUCKET, (FLEET_KEY, site_key(ME)))
    seen: dict[str, bytes] = {}
    while (update := await watcher.updates(timeout=15)) is not None:
        seen[update.key] = update.value
    await watcher.stop()
    assert seen == {FLEET_KEY: published(1), site_key(ME): published(2)}
    kv = await js.key_value(DEPLOY_BUCKET)
    # Another site's key: not by a keyed watch, a whole-bucket watch or a get.
    assert await _refused(watch_keys(js, DEPLOY_BUCKET, (site_key(OTHER),)))
    assert await _refused(kv.watchall())
    assert await _refused(kv.watch(site_key(OTHER)))
    assert await _refused(kv.get(site_key(OTHER)))
    # Body-addressed reads (`STREAM.MSG.GET`, what nats.py's get uses for a bucket without
    # direct gets) name no key, so they are refused even for its own key: sites watch instead.
    assert await _refused(kv.get(site_key(ME)))


async def test_the_model_agent_follows_its_own_target_and_the_fleets(link: Link, tmp_path: Path) -> None:
    replica = CatalogueReplica(tmp_path / "catalogue.json")
    client = CoreClient("http://127.0.0.1:9")  # no HTTP core: the watch alone must decide
    agent = ModelAgent(client, Recognizer(replica), replica, tmp_path / "models", site=ME)
    running = asyncio.create_task(agent.run(link.site.jetstream(domain="core"), link.leaf))
    try:
        desired = lambda: agent._desired.version if agent._desired else None
        await until(lambda: desired() == 2, "the site's own canary target")
        kv = await link.core.jetstream().key_value(DEPLOY_BUCKET)
        await kv.put(site_key(OTHER), published(7))  # another site's news: not this site's
        await kv.delete(site_key(ME))  # the canary ends: back to the fleet
        await until(lambda: desired() == 1, "the fleet's target")
        await kv.put(FLEET_KEY, published(4))
        await until(lambda: desired() == 4, "the fleet's new target")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await client.aclose()

