"""The edge's MQTT doors on a real embedded NATS server (MQTT over TCP and WebSockets).

Devices are real paho clients: the simulator's `Kiosk` and `Shopper`, and raw paho clients for
bad input. The doors are started exactly as `edge up` starts them (`start_doors`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import REGISTRY

from edge2core.common import envelope, topics
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.config import EdgeSettings
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.mqtt_door import MqttDoor, MqttEndpoint
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.edge.service import start_doors, start_sweeper
from edge2core.edge.spool import Spool
from edge2core.sim.devices import Kiosk, Shopper
from edge2core.sim.photos import SyntheticCatalogue
from edge2core.sim.synthetic import render_photo
from tests.support import waiting
from tests.support.helpers_model import TrainedModel, sku, trained_model  # noqa: F401 (fixture)
from tests.support.paths import CASES

pytestmark = pytest.mark.integration

WAIT = 15.0
ACK_WAIT = "1s"  # MQTT QoS 1 redelivery wait of the test broker (nats-server default: 30s)
_sites = itertools.count(1)


wait_until = partial(waiting.wait_until, timeout=WAIT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    root = tmp_path_factory.mktemp("nats")
    cfg = NatsServerConfig.with_free_ports(
        "edge-mqtt-test", root / "js", jetstream_domain="edgemq", mqtt_ack_wait=ACK_WAIT
    )
    with EmbeddedNats(cfg, root / "run") as srv:
        yield srv


class Watcher:
    """A raw paho client that records every message on some topic filters."""

    def __init__(self, endpoint: MqttEndpoint, *filters: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        connected, subscribed = threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"watch-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda *_a: connected.set()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(endpoint.host, endpoint.port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(WAIT), "watcher could not connect"
        self.client.subscribe([(f, 1) for f in filters])
        assert subscribed.wait(WAIT), "watcher SUBACK timed out"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), "PUBACK not received"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Site:
    name: str
    settings: EdgeSettings
    tcp: MqttEndpoint
    ws: MqttEndpoint
    recognizer: Recognizer
    root: Path
    spool: Spool | None = None
    gateway: Gateway | None = None
    doors: list[MqttDoor] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def open(self, budget: int) -> None:
        """(Re)open the spool with a budget and start the doors, as `edge up` does."""
        self.spool = Spool(self.root / "spool", budget)
        intake = Intake(self.name, PreparePolicy(), self.spool)
        self.gateway = Gateway(intake, self.recognizer)
        self.doors = start_doors(self.settings, self.gateway)

    def shut(self) -> None:
        for door in self.doors:
            door.stop()
        self.doors = []
        if self.gateway is not None:
            self.gateway.close()
        if self.spool is not None:
            self.spool.close()

    def watcher(self, *filters: str) -> Watcher:
        w = Watcher(self.tcp, *filters)
        self.closers.append(w.close)
        return w

    def kiosk(self, device: str) -> Kiosk:
        k = Kiosk(self.tcp, self.name, device)
        self.closers.append(k.close)
        return k

    def shopper(self, device: str) -> Shopper:
        s = Shopper(self.ws, self.name, device)
        self.closers.append(s.close)
        return s


@pytest.fixture
def make_site(server: EmbeddedNats, tmp_path: Path,
              trained_model: TrainedModel) -> Iterator[Callable[..., Site]]:  # noqa: F811
    made: list[Site] = []

    def make(budget: int = 50_000_000) -> Site:
        name = f"mq{next(_sites)}-{uuid.uuid4().hex[:6]}"  # fresh broker sessions per test
        host, port = server.mqtt_address
        ws_host, ws_port = server.websocket_address
        settings = EdgeSettings(site=name, data_dir=tmp_path / name, host=host, mqtt_port=port,
                                mqtt_ws_port=ws_port)
        catalogue = CatalogueReplica(tmp_path / name / "catalogue.json")
        catalogue.replace(list(trained_model.products))
        recognizer = Recognizer(catalogue)
        recognizer.load(trained_model.path, version=1, sha256=trained_model.sha256)
        site = Site(name, settings, MqttEndpoint(host, port), MqttEndpoint(ws_host, ws_port,
                    "websockets"), recognizer, tmp_path / name)
        made.append(site)
        site.open(budget)
        return site

    yield make
    for site in made:
        for close in site.closers:
            close()
        site.shut()


def capture(image: bytes, sku_: str | None = "SKU-0000", **header: object) -> bytes:
    if sku_ is not None:
        header["sku"] = sku_
    return envelope.encode(image, header)


def error_body(watcher: Watcher, topic: str) -> dict:
    wait_until(lambda: watcher.on(topic), what=f"an error on {topic}")
    return json.loads(watcher.on(topic)[0].payload)


# --------------------------------------------------------------------------- tests


def test_kiosk_captures_over_tcp_end_up_in_the_spool(make_site: Callable[..., Site]) -> None:
    site = make_site()
    source = SyntheticCatalogue(3)
    products = source.products()
    photos = [p for product in products for p in source.photos("train", product, 2)]
    kiosk = site.kiosk("kiosk-1")
    assert kiosk.send(photos) == len(photos)  # every PUBACK arrived

    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == len(photos), what="all captures spooled")
    items = {item.sha256: item for item in site.spool.pending(100)}
    for sent in photos:
        expected = prepare(sent.data, PreparePolicy())
        item = items[expected.sha256]
        assert (item.record.site, item.record.device, item.record.source.value) == (
            site.name, "kiosk-1", "kiosk")
        assert item.record.sku == sent.product.sku
        assert item.record.captured_at is not None
        stored = site.spool.read(expected.sha256)
        assert stored == expected.data
        assert hashlib.sha256(stored).hexdigest() == expected.sha256


def test_shopper_over_websockets_gets_an_answer(
    make_site: Callable[..., Site], trained_model: TrainedModel  # noqa: F811
) -> None:
    site = make_site()
    shopper = site.shopper("phone-1")
    names = {p.sku: p for p in trained_model.products}
    for product in (0, 2):
        reply = shopper.ask(trained_model.held_out(product)[0], timeout=WAIT)
        assert reply.error is False, reply.body
        assert reply.body["recognised"] is True
        assert reply.body["sku"] == sku(product)
        assert reply.body["name"] == names[sku(product)].name
        assert reply.body["price"] == names[sku(product)].price
        assert reply.body["model_version"] == 1
        assert reply.body["request_id"]

    bad = shopper.ask(b"this is no photo", timeout=WAIT)
    assert bad.error is True
    assert bad.body["reason"] == "not_an_image"
    assert bad.body["request_id"]
    # The door keeps answering after a refusal.
    assert shopper.ask(trained_model.held_out(1)[0], timeout=WAIT).body["sku"] == sku(1)


def test_mqtt_and_http_give_the_same_answer_from_one_pool(
    make_site: Callable[..., Site], trained_model: TrainedModel  # noqa: F811
) -> None:
    import socket

    from fastapi.testclient import TestClient

    from edge2core.edge.api import create_edge_app

    site = make_site()
    assert site.gateway is not None
    capture_door, recognize_door = site.doors
    # Captures: QoS 1 (acked once spooled); requests: QoS 0, nothing kept for a restart.
    assert capture_door.granted_qos == [1] and recognize_door.granted_qos == [0]
    for door in site.doors:
        sock = door.client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    shopper = site.shopper("phone-same")
    http = TestClient(create_edge_app(site.gateway, site.name, dict, 8_000_000))
    served_before = site.gateway.pool.batched_requests
    for product in range(3):
        photo = trained_model.held_out(product)[1]
        over_mqtt = shopper.ask(photo, timeout=WAIT)
        assert over_mqtt.error is False, over_mqtt.body
        response = http.post("/v1/recognize", content=photo, params={"device": "phone-same"})
        assert response.status_code == 200
        over_http = response.json()
        for body in (over_mqtt.body, over_http):
            body.pop("latency_ms")
            body.pop("request_id")
        assert over_mqtt.body == over_http and over_http["sku"] == sku(product)
    # Both doors' requests ran on the gateway's one pool.
    assert site.gateway.pool.batched_requests - served_before == 6


JPEG = render_photo(0, 3)

BAD_CAPTURES = [
    # (device, payload, reason); an empty payload is MQTT's "delete the retained message" and
    # is ignored (see test_retained_capture_is_ingested_once_and_not_kept_on_the_broker).
    ("k-text", capture(b"plain text, no photo"), "not_an_image"),
    ("k-trunc", capture(JPEG[: len(JPEG) // 3]), "corrupt"),
    ("k-empty-image", capture(b""), "empty"),
    ("k-bad-json", b'{"sku": "SKU-0000",\n' + JPEG, "malformed"),
    ("k-no-newline", b'{"sku": "SKU-0000"}' + JPEG.replace(b"\n", b""), "malformed"),
    ("k-json-list", b'["SKU-0000"]\n' + JPEG, "malformed"),
    ("k-no-sku", capture(JPEG, None, captured_at="2026-01-01T00:00:00Z"), "malformed"),
    ("k-bare-jpeg", JPEG, "malformed"),  # a kiosk capture must name its product
    ("k-bad-date", capture(JPEG, captured_at="yesterday-ish"), "malformed"),
    ("k-gif", capture(b"GIF89a" + b"\0" * 32), "unsupported_format"),
    # Case 1: JSON nested past Python's recursion limit, yet under the 4 KiB header limit.
    ("k-nested", b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}\n" + JPEG, "malformed"),
    # Cases 2 and 4: SKUs that cannot be a header, a path or a label are refused at the door.
    ("k-umlaut", capture(JPEG, "K\u00e4se-01"), "invalid_id"),
    ("k-traversal", capture(JPEG, "../../e2c-escape"), "invalid_id"),
    ("k-sku-number", capture(JPEG, 12), "invalid_id"),  # type: ignore[arg-type]
]


def test_bad_input_gets_an_error_and_the_door_keeps_working(make_site: Callable[..., Site]) -> None:
    site = make_site()
    watcher = site.watcher(f"e2c/{site.name}/+/+/error")
    for device, payload, _reason in BAD_CAPTURES:
        watcher.publish(topics.capture_topic(site.name, device), payload)
    # A recognition request without a request id cannot be answered: refused too.
    watcher.publish(topics.recognize_topic(site.name, "phone-x"), JPEG)

    for device, _payload, reason in BAD_CAPTURES:
        topic = topics.error_topic(site.name, "kiosk", device)
        body = error_body(watcher, topic)
        assert body["reason"] == reason, (device, body)
        assert body["detail"]
        assert body["topic"] == topics.capture_topic(site.name, device)
    shopper_error = error_body(watcher, topics.error_topic(site.name, "shopper", "phone-x"))
    assert shopper_error["reason"] == "malformed"

    assert site.spool is not None
    assert site.spool.stats().items == 0
    watcher.publish(topics.capture_topic(site.name, "k-good"), capture(JPEG))
    wait_until(lambda: site.spool.stats().items == 1, what="the good capture to be spooled")
    (item,) = site.spool.pending(5)
    assert item.record.device == "k-good"
    assert item.sha256 == prepare(JPEG, PreparePolicy()).sha256


BAD_REQUESTS = [  # (device, payload, reason): shopper recognition requests
    ("p-text", b'{"request_id": "r1"}\n' + b"not an image", "not_an_image"),
    ("p-trunc", b'{"request_id": "r2"}\n' + JPEG[: len(JPEG) // 3], "corrupt"),
    ("p-bad-json", b'{"request_id": "r3",\n' + JPEG, "malformed"),
    ("p-bad-id", b'{"request_id": "../r4"}\n' + JPEG, "invalid_id"),
]


def test_bad_recognition_requests_get_an_error_and_answers_go_on(
    make_site: Callable[..., Site],
) -> None:
    site = make_site()
    watcher = site.watcher(f"e2c/{site.name}/shopper/+/error", f"e2c/{site.name}/shopper/+/answer/+")
    for device, payload, _reason in BAD_REQUESTS:
        watcher.publish(topics.recognize_topic(site.name, device), payload)
    for device, _payload, reason in BAD_REQUESTS:
        body = error_body(watcher, topics.error_topic(site.name, "shopper", device))
        assert body["reason"] == reason, (device, body)
    watcher.publish(topics.recognize_topic(site.name, "p-good"), b'{"request_id": "ok1"}\n' + JPEG)
    answer = topics.answer_topic(site.name, "p-good", "ok1")
    wait_until(lambda: watcher.on(answer), what="an answer after the bad requests")


def test_other_sites_messages_are_not_taken(make_site: Callable[..., Site]) -> None:
    site = make_site()
    other = f"{site.name}-other"
    watcher = site.watcher(f"e2c/{other}/kiosk/+/capture", "e2c/+/+/+/error")
    foreign, own = render_photo(1, 4), render_photo(2, 4)

    watcher.publish(topics.capture_topic(other, "kiosk-1"), capture(foreign))
    wait_until(lambda: watcher.on(topics.capture_topic(other, "kiosk-1")),
               what="the broker to route the other site's capture")
    # Same publisher, later message: once this one is spooled, the earlier one would have
    # reached the door first had it been subscribed to it.
    watcher.publish(topics.capture_topic(site.name, "kiosk-1"), capture(own))

    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items >= 1, what="the own-site capture to be spooled")
    (item,) = site.spool.pending(5)
    assert item.sha256 == prepare(own, PreparePolicy()).sha256
    assert item.record.site == site.name
    assert not [m for m in watcher.messages if m.topic.endswith("/error")]


def test_full_spool_leaves_capture_unacknowledged_until_there_is_room(
    make_site: Callable[..., Site],
) -> None:
    site = make_site(budget=1_000)  # smaller than any prepared photo
    watcher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    kiosk = site.kiosk("kiosk-1")
    source = SyntheticCatalogue(3)
    (photo,) = source.photos("train", source.products()[1], 1)
    assert kiosk.send([photo]) == 1  # the broker has it

    body = error_body(watcher, topics.error_topic(site.name, "kiosk", "kiosk-1"))
    assert body["reason"] == "spool_full"
    assert body["detail"]
    assert site.spool is not None and site.spool.stats().items == 0

    # The operator raises the budget and restarts the edge: same client ids, same sessions.
    site.shut()
    site.open(budget=50_000_000)
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 1,
               what="the broker to redeliver the unacknowledged capture")
    (item,) = site.spool.pending(5)
    expected = prepare(photo.data, PreparePolicy())
    assert item.sha256 == expected.sha256
    assert item.record.sku == photo.product.sku
    assert site.spool.read(item.sha256) == expected.data




def _errors(watcher: Watcher, topic: str) -> int:
    return len(watcher.on(topic))


def test_case1_poison_headers_are_refused_once_and_intake_goes_on(
    make_site: Callable[..., Site],
) -> None:
    """Case 1: 1,030 captures whose header raised RecursionError filled the session's pending
    acks and stopped all MQTT intake. Each must be refused once (acknowledged, not redelivered)."""
    case = CASES / "1-nested-json-header.bin"
    payload = case.read_bytes() if case.exists() else (
        b'{"sku":"SKU-0000","x":' + b"[" * 2000 + b"]" * 2000 + b"}\n" + JPEG)
    site = make_site()
    watcher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    error_topic = topics.error_topic(site.name, "kiosk", "k-poison")
    for _ in range(30):
        watcher.publish(topics.capture_topic(site.name, "k-poison"), payload)
    watcher.publish(topics.capture_topic(site.name, "k-good"), capture(JPEG))
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 1, what="the good capture behind 30 poisons")
    wait_until(lambda: _errors(watcher, error_topic) == 30, what="30 refusals")
    assert {json.loads(m.payload)["reason"] for m in watcher.on(error_topic)} == {"malformed"}
    # Acknowledged, so never redelivered (the test broker redelivers after 1 s).
    time.sleep(3)
    assert _errors(watcher, error_topic) == 30


class Surprise(Exception):
    """An exception nobody wrote a handler for."""


def test_an_unforeseen_exception_ends_in_a_dead_letter_not_a_redelivery_loop(
    make_site: Callable[..., Site],
) -> None:
    site = make_site()
    assert site.gateway is not None
    calls: list[str] = []
    real_capture = site.gateway.capture

    def skipped() -> float:
        return REGISTRY.get_sample_value("e2c_mqtt_redelivery_skipped_total") or 0.0

    skipped_before = skipped()

    def capture_or_raise(data: bytes, meta: object, door: str) -> object:
        if getattr(meta, "device", "") == "k-boom":
            calls.append("boom")
            # Slower than the broker's ack wait: it resends the message (DUP) while a worker
            # still holds it, and that copy must not be handled, nor dead-lettered, again.
            time.sleep(0.6)
            raise Surprise("no handler was written for this")
        return real_capture(data, meta, door)  # type: ignore[arg-type]

    site.gateway.capture = capture_or_raise  # type: ignore[method-assign]
    watcher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    watcher.publish(topics.capture_topic(site.name, "k-boom"), capture(JPEG))
    watcher.publish(topics.capture_topic(site.name, "k-fine"), capture(JPEG, "SKU-0001"))

    body = error_body(watcher, topics.error_topic(site.name, "kiosk", "k-boom"))
    assert body["reason"] == "internal_error"
    assert "Surprise" not in body["detail"] and "/" not in body["detail"]  # no internals
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 1, what="the other device's capture")
    letters = DeadLetters(site.settings.data_dir / "dead-letters").list()
    assert [(letter.topic, letter.reason) for letter in letters] == [
        (topics.capture_topic(site.name, "k-boom"), "internal_error")]
    assert "Surprise" in letters[0].error
    assert DeadLetters(site.settings.data_dir / "dead-letters").payload(letters[0].id) == (
        capture(JPEG))
    tried = len(calls)
    assert tried == 3  # bounded attempts in the process, the broker's resend skipped
    assert skipped() > skipped_before  # the broker did resend, and the copy was skipped
    time.sleep(3)  # the broker would have redelivered an unacknowledged message by now
    assert len(calls) == tried


def test_one_devices_slow_photo_does_not_hold_up_another_device(
    make_site: Callable[..., Site],
) -> None:
    """Case 5's kind: a photo that takes long to prepare blocks only its own device's queue;
    paho's network thread never prepares photos."""
    site = make_site()
    assert site.gateway is not None
    release = threading.Event()
    real_capture = site.gateway.capture

    def slow_for_one(data: bytes, meta: object, door: str) -> object:
        if getattr(meta, "device", "") == "k-slow":
            assert release.wait(WAIT)
        return real_capture(data, meta, door)  # type: ignore[arg-type]

    site.gateway.capture = slow_for_one  # type: ignore[method-assign]
    watcher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    source = SyntheticCatalogue(3)
    photos = source.photos("train", source.products()[0], 3)
    watcher.publish(topics.capture_topic(site.name, "k-slow"), capture(photos[0].data))
    for photo in photos[1:]:
        watcher.publish(topics.capture_topic(site.name, "k-fast"), capture(photo.data))
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 2, what="the fast device's captures")
    assert {i.record.device for i in site.spool.pending(10)} == {"k-fast"}
    release.set()
    wait_until(lambda: site.spool.stats().items == 3, what="the slow capture once released")


def test_case5_a_jpeg_with_a_thousand_scans_is_refused_quickly(
    make_site: Callable[..., Site],
) -> None:
    case = CASES / "5-progressive-14mp-1000scans.jpg"
    if not case.exists():
        pytest.skip("../shared/cases is not on this machine (tests/common/test_images.py builds one)")
    site = make_site()
    watcher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    watcher.publish(topics.capture_topic(site.name, "k-scans"), capture(case.read_bytes()))
    body = error_body(watcher, topics.error_topic(site.name, "kiosk", "k-scans"))
    assert body["reason"] == "too_complex"


def _retained_on(endpoint: MqttEndpoint, topic: str, wait_s: float = 1.0) -> list[bytes]:
    """What the broker hands a brand-new subscriber as retained on `topic`."""
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    client.on_message = lambda _c, _u, m: got.append(m.payload) if m.retain else None
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    client.subscribe(topic, 1)
    time.sleep(wait_s)
    client.disconnect()
    client.loop_stop()
    return got


def test_retained_capture_is_ingested_once_and_not_kept_on_the_broker(
    make_site: Callable[..., Site],
) -> None:
    """Case R3: a capture published with the retain flag stayed on the broker raw, and the
    edge ingested it again at every restart."""
    site = make_site()
    site.settings = site.settings.model_copy(update={"retained_sweep_s": 0.3})
    sweeper = start_sweeper(site.settings)
    site.closers.append(sweeper.stop)
    topic = topics.capture_topic(site.name, "k-retain")
    publisher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    info = publisher.client.publish(topic, capture(JPEG), qos=1, retain=True)
    info.wait_for_publish(timeout=WAIT)
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 1, what="the retained capture, once")
    wait_until(lambda: sweeper.cleared >= 1, what="the sweeper to delete the retained copy")
    assert _retained_on(site.tcp, topic) == []
    site.shut()
    site.open(budget=50_000_000)
    time.sleep(1.5)  # a replay would have been ingested by now
    assert site.spool is not None and site.spool.stats().items == 1
    assert not publisher.on(topics.error_topic(site.name, "kiosk", "k-retain"))


def test_a_retained_replay_is_skipped_while_the_session_is_present(
    make_site: Callable[..., Site],
) -> None:
    """Without the sweeper (an external broker, say), a restart re-subscribes and the broker
    replays the retained capture: the door's session had the live copy, so it is not taken."""
    site = make_site()
    topic = topics.capture_topic(site.name, "k-retain2")
    publisher = site.watcher(f"e2c/{site.name}/kiosk/+/error")
    publisher.client.publish(topic, capture(JPEG), qos=1, retain=True).wait_for_publish(WAIT)
    assert site.spool is not None
    wait_until(lambda: site.spool.stats().items == 1, what="the live copy")
    (item,) = site.spool.pending(1)
    site.spool.remove(item.sha256)  # forwarded meanwhile
    site.shut()
    site.open(budget=50_000_000)
    time.sleep(1.5)
    assert site.spool is not None and site.spool.stats().items == 0
    publisher.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(WAIT)
