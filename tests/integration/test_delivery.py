"""Model delivery: the core's desired state in JetStream KV, watched by edge sites over a real
leaf link (core and edge nats-servers, a TCP relay between them that the tests cut), canary
targeting, catalogue replication, delta (head-only) delivery, and catching up after an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from prometheus_client import REGISTRY

from edge2core.common.events import FLEET_KEY, ModelPublished, product_key, site_key
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.products import Product, ProductStatus
from edge2core.config import CoreSettings
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.deliver.deployments import CatalogueFeed, SiteBoard, open_buckets
from edge2core.core.deliver.registry import ModelRegistry
from edge2core.core.service import build_core_services
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.inference import Recognizer
from edge2core.edge.kv_follower import LeafLink
from edge2core.edge.model_agent import ModelAgent
from tests.support.backends import CoreServer
from tests.support.grocery import needs_grocery, photos_of, store_kiosk
from tests.support.grocery import sku as sku_of
from tests.support.helpers_model import (  # noqa: F401 (fixtures)
    SplitModel,
    TrainedModel,
    sku,
    split_model,
    trained_model,
    tweaked_copy,
)
from tests.support.recorded_sites import RecordedSites
from tests.support.waiting import until

# --------------------------------------------------------------------------- registry alone


def register(registry: ModelRegistry, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
    return registry.register(data, dataset_version=1, classes=["A", "B"], metrics={}, params={}, **kw)


def test_canary_targets_sites_then_the_fleet(tmp_path: Path) -> None:
    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.db import storage

    sessions = storage.database(CoreSettings(data_dir=tmp_path))
    sites = RecordedSites()
    registry = ModelRegistry(LocalObjectStore(tmp_path / "objects"), sessions, sites)
    v1 = register(registry, b"model one")
    v2 = register(registry, b"model two", promote=False)

    with pytest.raises(ValueError, match="names the sites"):
        registry.promote(v2.version, stage="canary")
    with pytest.raises(ValueError, match="names the sites"):
        registry.promote(v2.version, sites=["store-1"])

    canary = registry.promote(v2.version, stage="canary", sites=["store-2", "store-1"])
    assert canary.stage == "canary" and canary.canary_sites == ["store-1", "store-2"]
    assert [sites.version_at(s) for s in ("store-1", "store-2", "store-3")] == [2, 2, 1]
    assert registry.desired_for("store-1").version == 2
    assert registry.desired_for("store-3").version == v1.version

    registry.promote(v2.version)  # canary went well: the fleet
    assert [sites.version_at(s) for s in ("store-1", "store-2", "store-3")] == [2, 2, 2]
    assert sites.targets == {} and registry.canary() is None

    v3 = register(registry, b"model three", promote=False)
    registry.promote(v3.version, stage="canary", sites=["store-3"])
    assert sites.version_at("store-3") == 3
    registry.promote(v3.version, stage="candidate", reason="canary stopped")  # taken back
    assert sites.version_at("store-3") == 2 and registry.desired_for("store-3").version == 2

    registry.promote(v3.version, stage="canary", sites=["store-3"])
    registry.retire(v3.version, "canary failed")
    assert sites.targets == {}
    history = registry.get(v3.version).history
    assert [h["stage"] for h in history][-3:] == ["candidate", "canary", "retired"]


# --------------------------------------------------------------------------- over NATS KV


class LinkSwitch:
    """A TCP relay for the leaf link from an edge broker to the core's; `cut()` drops every
    connection and refuses new ones (the site is offline), `restore()` listens again."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Site:
    name: str
    recognizer: Recognizer
    catalogue: CatalogueReplica
    agent: ModelAgent
    models_dir: Path

    @property
    def version(self) -> int | None:
        return self.recognizer.model.version if self.recognizer.model else None


@dataclass
class World:
    core: CoreServices
    link: LinkSwitch
    sites: dict[str, Site]

    async def call(self, fn: Callable[..., object], *args: object, **kw: object) -> object:
        """Registry and catalogue calls come from worker threads, as in the core's API."""
        return await asyncio.to_thread(fn, *args, **kw)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
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
    deploy, catalogue = await open_buckets(core_client.jetstream())
    services = build_core_services(CoreSettings(data_dir=tmp_path / "core"),
                                   SiteBoard(deploy), CatalogueFeed(catalogue))
    try:
        with CoreServer(create_core_app(services)) as http:
            leaf = LeafLink(edge_cfg.monitor_url, every_s=0.1)
            tasks = [asyncio.create_task(leaf.run())]
            sites: dict[str, Site] = {}
            clients = []
            for name in ("store-1", "store-2"):
                replica = CatalogueReplica(tmp_path / name / "catalogue.json")
                recognizer = Recognizer(replica)
                client = CoreClient(http.url)
                clients.append(client)
                agent = ModelAgent(client, recognizer, replica, tmp_path / name / "models",
                                   site=name)
                sites[name] = Site(name, recognizer, replica, agent, tmp_path / name / "models")
                tasks.append(asyncio.create_task(
                    agent.run(edge_client.jetstream(domain="core"), leaf)))
            try:
                yield World(services, link, sites)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for client in clients:
                    await client.aclose()
                await edge_client.close()
                await core_client.close()
    finally:
        edge_nats.stop()
        core_nats.stop()


async def test_sites_follow_fleet_and_canary_targets_and_catch_up_after_an_outage(
    world: World, trained_model: TrainedModel,  # noqa: F811
) -> None:
    core, one, two = world.core, world.sites["store-1"], world.sites["store-2"]
    await world.call(core.catalogue.upsert, list(trained_model.products))
    await until(lambda: len(one.catalogue) == len(trained_model.products), "catalogue replica")

    def publish(note: str, promote: bool = True):  # type: ignore[no-untyped-def]
        data = trained_model.data if note == "v1" else tweaked_copy(trained_model.data, note)
        return core.registry.register(data, dataset_version=1, classes=list(trained_model.classes),
                                      metrics={}, params={}, promote=promote)

    v1 = await world.call(publish, "v1")
    await until(lambda: one.version == two.version == v1.version, "both sites on v1")
    assert one.recognizer.recognize(trained_model.held_out(1)[0]).sku == sku(1)

    # A canary on store-1 only.
    v2 = await world.call(publish, "v2", False)
    await world.call(core.registry.promote, v2.version, stage="canary", sites=["store-1"],
                     use_gate=False)
    await until(lambda: one.version == v2.version, "the canary site on v2")
    assert two.version == v1.version

    # The canary is taken back: store-1 returns to the fleet's model.
    await world.call(core.registry.promote, v2.version, stage="candidate", reason="stop")
    await until(lambda: one.version == v1.version, "the canary site back on v1")

    # store-2 goes offline; meanwhile a new model reaches the fleet and a price changes.
    await world.link.cut()
    v3 = await world.call(publish, "v3")
    cheaper = trained_model.products[0].model_copy(update={"price": 0.99})
    await world.call(core.catalogue.upsert, [cheaper])
    await asyncio.sleep(1.0)
    assert one.version == two.version == v1.version  # nothing reaches the sites while cut
    assert one.catalogue.get(cheaper.sku).price == trained_model.products[0].price

    await world.link.restore()
    await until(lambda: one.version == two.version == v3.version, "both sites on v3 after the outage")
    await until(lambda: two.catalogue.get(cheaper.sku).price == 0.99, "the price change")

    def pointer() -> int:
        return ModelPublished.model_validate_json((two.models_dir / "current.json").read_text()).version

    await until(lambda: pointer() == v3.version, "the restart pointer at v3")

    # Retired at the core: masked at the edge at once, without a new model.
    retired = trained_model.products[1].model_copy(update={"status": ProductStatus.RETIRED})
    await world.call(core.catalogue.upsert, [retired])
    await until(lambda: not one.catalogue.is_sellable(retired.sku), "the retirement")
    for photo in trained_model.held_out(1):
        assert one.recognizer.recognize(photo).sku != retired.sku


def delivered(kind: str) -> float:
    return REGISTRY.get_sample_value("e2c_model_delivery_bytes_total", {"kind": kind}) or 0.0


async def test_a_new_head_on_a_known_backbone_is_delivered_as_kilobytes(
    world: World, split_model: SplitModel,  # noqa: F811
) -> None:
    core, site = world.core, world.sites["store-1"]
    await world.call(core.catalogue.upsert, [
        Product(sku=c, name=c, price=1.0) for c in split_model.classes])

    def publish(i: int):  # type: ignore[no-untyped-def]
        return core.registry.register(
            split_model.fulls[i], dataset_version=1, classes=list(split_model.classes),
            metrics={}, params={},
            extra_artifacts={"head": split_model.heads[i], "backbone": split_model.backbone})

    before = {k: delivered(k) for k in ("full", "backbone", "head")}
    # An earlier, cut download of the full file: the delta must not trip over it.
    site.models_dir.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(split_model.fulls[0]).hexdigest()
    (site.models_dir / f"1-{sha[:16]}.part").write_bytes(split_model.fulls[0][: 1 << 20])
    v1 = await world.call(publish, 0)
    await until(lambda: site.version == v1.version, "v1 live")
    v2 = await world.call(publish, 1)
    await until(lambda: site.version == v2.version, "v2 live")
    grown = {k: delivered(k) - before[k] for k in before}
    # Two sites fetched the backbone once each and both heads; no full file went anywhere.
    assert grown["full"] == 0
    assert grown["backbone"] == 2 * len(split_model.backbone)
    assert grown["head"] == 2 * sum(len(h) for h in split_model.heads)
    served = site.models_dir / f"{v2.version}-{v2.sha256[:16]}.onnx"
    assert hashlib.sha256(served.read_bytes()).hexdigest() == v2.sha256 == hashlib.sha256(
        split_model.fulls[1]).hexdigest()


async def test_a_head_that_does_not_compose_to_the_registered_file_is_not_served(
    world: World, split_model: SplitModel,  # noqa: F811
) -> None:
    """The full file is the reference: a head that composes into other bytes (tampered, or
    another onnx version) makes the site download the registry's full file instead."""
    core, site = world.core, world.sites["store-1"]
    before = delivered("full")
    v1 = await world.call(
        core.registry.register, split_model.fulls[0], dataset_version=1,
        classes=list(split_model.classes), metrics={}, params={},
        extra_artifacts={"head": split_model.heads[1], "backbone": split_model.backbone})
    await until(lambda: site.version == v1.version, "v1 live")
    assert site.recognizer.model.sha256 == hashlib.sha256(split_model.fulls[0]).hexdigest()
    assert delivered("full") - before == 2 * len(split_model.fulls[0])


async def test_a_malformed_desired_state_is_ignored(world: World) -> None:
    site = world.sites["store-1"]
    await site.agent.on_deploy_state({FLEET_KEY: b"{not json"})
    await site.agent.on_deploy_state({site_key("store-1"): b'{"version": "x"}'})
    await site.agent.on_catalogue_state({product_key("A"): b"[]", product_key("B"): Product(
        sku="B", name="Bread", price=2.0).model_dump_json().encode()})
    assert site.version is None
    assert [p.sku for p in site.catalogue.list()] == ["B"]


def test_product_keys_are_valid_kv_keys() -> None:
    import re

    for sku_ in ("SKU-0001", "Golden-Delicious", "4011", "café crème", "a/b.c"):
        key = product_key(sku_)
        assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key), key
    assert product_key("café crème") != product_key("cafe creme")


@needs_grocery
async def test_a_new_product_is_learned_and_answered_at_the_edge(world: World) -> None:
    """The whole loop on real photos: the first model by itself, then a new product's
    captures trigger a retrain that reaches both sites, which answer it; retired, it is
    never answered again."""
    core, site = world.core, world.sites["store-1"]
    loop = core.loop
    loop.policy = loop.policy.model_copy(update={
        "new_product_min_photos": 16, "bootstrap_quiet_s": 0, "train_params": {"int8": False}})
    known, new = (4, 30, 45), 63
    for i in known:
        await world.call(core.catalogue.add, Product(sku=sku_of(i), name=f"product {i}", price=1.0))
        store_kiosk(core, photos_of(i, "train", 10), sku_of(i), "train")
        store_kiosk(core, photos_of(i, "val", 3), sku_of(i), "val")
    first = await world.call(loop.step)
    await until(lambda: site.version == first.version, "the first model at the edge", 60)

    await world.call(core.catalogue.add, Product(
        sku=sku_of(new), name="new product", price=3.2, status=ProductStatus.PENDING_DATA))
    store_kiosk(core, photos_of(new, "train", 16), sku_of(new), "train")
    learned = await world.call(loop.step)
    assert learned is not None and sku_of(new) in learned.classes
    await until(lambda: all(s.version == learned.version for s in world.sites.values()),
                "the new model at both sites", 60)
    await until(lambda: site.catalogue.get(sku_of(new)).status == ProductStatus.ACTIVE,
                "the product active at the edge")
    held_out = photos_of(new, "val", 4)
    answers = [site.recognizer.recognize(photo) for photo in held_out]
    assert sum(a.top_k[0].sku == sku_of(new) for a in answers) >= len(held_out) // 2 + 1
    assert next(a for a in answers if a.sku == sku_of(new)).price == 3.2

    await world.call(core.catalogue.retire, sku_of(new), "recalled")
    await until(lambda: not site.catalogue.is_sellable(sku_of(new)), "the retirement at the edge")
    assert all(site.recognizer.recognize(photo).sku != sku_of(new) for photo in held_out)


def test_rolling_back_to_the_canary_ends_its_site_targets(tmp_path: Path) -> None:
    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.db import storage

    sessions = storage.database(CoreSettings(data_dir=tmp_path))
    sites = RecordedSites()
    registry = ModelRegistry(LocalObjectStore(tmp_path / "objects"), sessions, sites)
    register(registry, b"model one")
    v2 = register(registry, b"model two", promote=False)
    registry.promote(v2.version, stage="canary", sites=["s1"])
    registry.rollback("the canary is better", to=v2.version)
    assert sites.targets == {} and registry.canary() is None
    v3 = register(registry, b"model three")
    assert sites.version_at("s1") == v3.version == registry.desired_for("s1").version
