"""The edge's doors on any MQTT 3.1.1 broker: Mosquitto on 127.0.0.1:1883 (started by .ci/run)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.common import envelope, topics
from edge2core.config import EdgeSettings
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.edge.service import start_doors
from edge2core.edge.spool import Spool
from edge2core.sim.devices import Kiosk
from edge2core.sim.photos import SyntheticCatalogue

BROKER = ("127.0.0.1", 1883)


def _mosquitto_up() -> bool:
    try:
        socket.create_connection(BROKER, timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Spool]]:
    if not _mosquitto_up():
        pytest.skip("no MQTT broker on 127.0.0.1:1883 (.ci/run starts Mosquitto)")
    name = f"mosq-{uuid.uuid4().hex[:8]}"  # fresh topics and sessions on a shared broker
    settings = EdgeSettings(site=name, data_dir=tmp_path, external_mqtt="127.0.0.1:1883")
    spool = Spool(tmp_path / "spool", 50_000_000)
    gateway = Gateway(Intake(name, PreparePolicy(), spool), Recognizer(CatalogueReplica(tmp_path / "c.json")))
    doors = start_doors(settings, gateway)
    yield name, spool
    for door in doors:
        door.stop()
    gateway.close()
    spool.close()


def test_kiosk_captures_through_mosquitto_are_spooled_intact(site: tuple[str, Spool]) -> None:
    name, spool = site
    source = SyntheticCatalogue(2)
    batch = [p for product in source.products() for p in source.photos("train", product, 3)]
    kiosk = Kiosk(MqttEndpoint(*BROKER), name, "kiosk-1")
    try:
        assert kiosk.send(batch) == len(batch)
    finally:
        kiosk.close()
    deadline = time.monotonic() + 20
    while spool.stats().items < len(batch) and time.monotonic() < deadline:
        time.sleep(0.05)
    spooled = {item.sha256 for item in spool.pending(100)}
    assert spooled == {prepare(p.data, PreparePolicy()).sha256 for p in batch}


def test_bad_input_through_mosquitto_gets_an_error_reply(site: tuple[str, Spool]) -> None:
    name, spool = site
    errors: list[dict] = []
    got = threading.Event()
    watcher = make_client(MqttEndpoint(*BROKER), f"watch-{name}")
    watcher.on_message = lambda _c, _u, msg: (errors.append(json.loads(msg.payload)), got.set())
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.connect(*BROKER)
    watcher.loop_start()
    try:
        watcher.subscribe(topics.error_topic(name, "kiosk", "kiosk-2"), 1)
        assert subscribed.wait(10)
        info = watcher.publish(topics.capture_topic(name, "kiosk-2"),
                               envelope.encode(b"not a photo", {"sku": "SKU-0001"}), qos=1)
        info.wait_for_publish(10)
        assert got.wait(10), "no error reply"
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert errors[0]["reason"] == "not_an_image"
    assert spool.stats().items == 0


def _big_jpeg(target: int = 7_500_000) -> bytes:
    """A real photo-sized JPEG just under 8 MB: noise compresses badly, as fine detail does."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    side = 2400
    while True:
        pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        if len(out.getvalue()) >= target * 0.9 or side > 5000:
            return out.getvalue()
        side = int(side * (target / len(out.getvalue())) ** 0.5)


def test_qos0_and_an_8mb_photo_are_taken(site: tuple[str, Spool]) -> None:
    name, spool = site
    big = _big_jpeg()
    assert 6_000_000 < len(big) <= 8 * 1024 * 1024
    client = make_client(MqttEndpoint(*BROKER), f"kiosk-q0-{name}")
    client.connect(*BROKER)
    client.loop_start()
    try:
        small = SyntheticCatalogue(1).photos("train", SyntheticCatalogue(1).products()[0], 1)[0]
        client.publish(topics.capture_topic(name, "kiosk-q0"),
                       envelope.encode(small.data, {"sku": "SKU-0000"}), qos=0)
        info = client.publish(topics.capture_topic(name, "kiosk-big"),
                              envelope.encode(big, {"sku": "SKU-0001"}), qos=1)
        info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    deadline = time.monotonic() + 60
    while spool.stats().items < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    devices = sorted(item.record.device for item in spool.pending(10))
    assert devices == ["kiosk-big", "kiosk-q0"]
