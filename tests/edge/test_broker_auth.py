"""The broker admits devices only with client ids of their own (field case 14).

Real nats-server, the edge's real wiring (`edge_nats_config`, the auth callout service,
`start_doors` with the internal user), real paho clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import REGISTRY

from edge2core.common import envelope, topics
from edge2core.common.nats_server import MQTT_WS_PATH, EmbeddedNats, NatsServerConfig, render_config
from edge2core.config import EdgeSettings
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.broker_watch import watch_auth_failures
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.mqtt_door import MqttDoor
from edge2core.edge.nats_jwt import (
    PREFIX_ACCOUNT,
    PREFIX_SERVER,
    Issuer,
    decode_public_key,
    encode_public_key,
)
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.service import SiteAccess, edge_nats_config, site_access, start_doors
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo
from tests.support import waiting

pytestmark = pytest.mark.integration

SITE = "store-14"
wait_until = partial(waiting.wait_until, timeout=20.0, every=0.05)


def refused_count(reason: str, door: str = "mqtt") -> float:
    return REGISTRY.get_sample_value(
        "e2c_devices_refused_total", {"door": door, "reason": reason}
    ) or 0.0


# --------------------------------------------------------------------------- keys, config


def test_nkeys_round_trip_and_checksum() -> None:
    issuer = Issuer()
    assert issuer.public_key.startswith("A") and len(issuer.public_key) == 56
    raw = decode_public_key(PREFIX_ACCOUNT, issuer.public_key)
    assert encode_public_key(PREFIX_ACCOUNT, raw) == issuer.public_key
    assert encode_public_key(PREFIX_SERVER, raw).startswith("N")
    with pytest.raises(ValueError):
        decode_public_key(PREFIX_SERVER, issuer.public_key)  # an account key, not a server's
    broken = issuer.public_key[:-3] + ("A" if issuer.public_key[-3] != "A" else "B") + issuer.public_key[-2:]
    with pytest.raises(ValueError):
        decode_public_key(PREFIX_ACCOUNT, broken)
    assert Issuer().public_key != issuer.public_key  # fresh per run


def test_edge_config_delegates_devices_and_keeps_secrets_out(tmp_path: Path) -> None:
    settings = EdgeSettings(site=SITE, data_dir=tmp_path, core_leaf_url=None)
    access = site_access(settings)
    access.devices.add("kiosk-1", DeviceRole.KIOSK)
    text = render_config(edge_nats_config(settings, access))
    assert "auth_callout" in text and access.issuer.public_key in text
    assert '"$SYS"' in text and access.system.user in text
    assert "kiosk-1" not in text  # devices are not server users any more
    # No device identity: an open broker, as before.
    open_text = render_config(edge_nats_config(settings.model_copy(update={"device_auth": False}),
                                               site_access(settings.model_copy(update={"device_auth": False}))))
    assert "authorization" not in open_text and "accounts" not in open_text


# --------------------------------------------------------------------------- the site


@dataclass
class Site:
    settings: EdgeSettings
    access: SiteAccess
    server: EmbeddedNats
    auth: BrokerAuth
    spool: Spool
    gateway: Gateway
    doors: list[MqttDoor]

    @property
    def devices(self) -> DeviceRegistry:
        assert self.access.devices is not None
        return self.access.devices

    def door_client_id(self, name: str) -> str:
        ids = json.loads((self.settings.data_dir / "mqtt-client-ids.json").read_text())
        return ids[f"e2c-{SITE}-{name}"]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    probe = NatsServerConfig.with_free_ports("probe", tmp_path / "js")
    settings = EdgeSettings(
        site=SITE, data_dir=tmp_path / "edge", mqtt_port=probe.mqtt_port,
        mqtt_ws_port=probe.websocket_port, nats_port=probe.client_port,
        nats_http_port=probe.http_port, core_leaf_url=None,
    )
    settings.data_dir.mkdir(parents=True)
    access = site_access(settings)
    server = EmbeddedNats(edge_nats_config(settings, access), tmp_path / "run").start()
    auth = access.broker_auth(SITE, server.client_url)
    assert auth is not None
    auth.start()
    spool = Spool(tmp_path / "spool", 100_000_000)
    gateway = Gateway(Intake(SITE, PreparePolicy(), spool),
                      Recognizer(CatalogueReplica(tmp_path / "c.json")))
    s = Site(settings, access, server, auth, spool, gateway, [])
    s.doors = start_doors(settings, gateway, access)
    yield s
    for door in s.doors:
        door.stop()
    gateway.close()
    spool.close()
    auth.stop()
    server.stop()


class Device:
    """A paho client: CONNACK, SUBACKs and PUBACKs recorded."""

    def __init__(self, site: Site, user: str, password: str, client_id: str, *,
                 websocket: bool = False, clean: bool = True) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=clean,
                                  transport="websockets" if websocket else "tcp")
        if websocket:
            self.client.ws_set_options(path=MQTT_WS_PATH)
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(30, 60)  # one attempt is what each test looks at
        self.answered = threading.Event()
        self.reason: object = None
        self.subacks: dict[int, list[int]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(
            mid, [getattr(c, "value", c) for c in codes])
        port = site.settings.mqtt_ws_port if websocket else site.settings.mqtt_port
        started = time.perf_counter()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.answered.wait(10), "no CONNACK"
        self.connect_s = time.perf_counter() - started

    def _on_connect(self, _c, _u, _f, reason, _p) -> None:
        if self.reason is None:
            self.reason = reason
        self.answered.set()

    @property
    def admitted(self) -> bool:
        return not self.reason.is_failure  # type: ignore[attr-defined]

    def capture(self, device: str, index: int) -> mqtt.MQTTMessageInfo:
        payload = envelope.encode(render_photo(index % 4, index, seed=14), {"sku": f"SKU-{index % 4:04d}"})
        return self.client.publish(topics.capture_topic(SITE, device), payload, qos=1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def connect(site: Site, user: str, password: str, client_id: str, **kw: bool) -> Device:
    return Device(site, user, password, client_id, **kw)


def attempt(site: Site, user: str, password: str, client_id: str, **kw: bool) -> bool:
    """Connect once; True if admitted."""
    device = connect(site, user, password, client_id, **kw)
    device.close()
    return device.admitted


# --------------------------------------------------------------------------- admitted


def test_devices_connect_with_their_own_client_ids_and_publish(site: Site) -> None:
    token = site.devices.add("kiosk-1", DeviceRole.KIOSK)
    for n, client_id in enumerate(("kiosk-1", "kiosk-1-2")):
        kiosk = connect(site, "kiosk-1", token, client_id)
        try:
            assert kiosk.admitted, (client_id, kiosk.reason)
            assert kiosk.connect_s < 1.0, f"connect took {kiosk.connect_s:.3f}s"
            info = kiosk.capture("kiosk-1", n)
            info.wait_for_publish(10)
            assert info.is_published()
        finally:
            kiosk.close()
    wait_until(lambda: site.spool.stats().items == 2, what="both captures spooled")


def test_a_devices_own_subscriptions_are_granted_over_tcp_and_websockets(site: Site) -> None:
    kiosk_token = site.devices.add("kiosk-1", DeviceRole.KIOSK)
    phone_token = site.devices.add("phone-1", DeviceRole.SHOPPER)
    kiosk = connect(site, "kiosk-1", kiosk_token, "kiosk-1")
    phone = connect(site, "phone-1", phone_token, "phone-1-app", websocket=True)
    try:
        assert kiosk.admitted and phone.admitted
        mids = [
            (kiosk, kiosk.client.subscribe(f"e2c/{SITE}/kiosk/kiosk-1/#", 1)[1]),
            (phone, phone.client.subscribe(f"e2c/{SITE}/shopper/phone-1/#", 1)[1]),
            (phone, phone.client.subscribe(f"e2c/{SITE}/shopper/phone-1/answer/+", 1)[1]),
            (phone, phone.client.subscribe(f"e2c/{SITE}/shopper/phone-2/#", 1)[1]),
        ]
        wait_until(lambda: all(mid in d.subacks for d, mid in mids), what="SUBACKs")
        granted = [d.subacks[mid] for d, mid in mids]
        assert granted[:3] == [[1], [1], [1]]
        assert granted[3] == [0x80]  # another device's topics
    finally:
        kiosk.close()
        phone.close()


# --------------------------------------------------------------------------- refused


def test_takeover_attempts_are_refused_at_connect_and_counted(site: Site) -> None:
    token = site.devices.add("kiosk-1", DeviceRole.KIOSK)
    site.devices.add("kiosk-2", DeviceRole.KIOSK)
    before = refused_count("client_id_not_owned")
    stolen = [site.door_client_id("capture"), site.door_client_id("recognize"),
              f"e2c-{SITE}-capture", "kiosk-2", "kiosk-2-x"]
    for client_id in stolen:
        device = connect(site, "kiosk-1", token, client_id)
        device.close()
        assert not device.admitted, client_id
        assert str(device.reason) == "Not authorized", device.reason
    # Over WebSockets too, and with a client id the client library made up.
    assert not attempt(site, "kiosk-1", token, site.door_client_id("capture"), websocket=True)
    assert not attempt(site, "kiosk-1", token, "")
    assert refused_count("client_id_not_owned") - before == len(stolen) + 2
    assert all(door.client.is_connected() for door in site.doors)


def test_unknown_revoked_and_wrong_secret_are_refused(site: Site) -> None:
    token = site.devices.add("kiosk-1", DeviceRole.KIOSK)
    counts = {r: refused_count(r) for r in ("unknown_device", "wrong_secret", "revoked_device")}
    assert not attempt(site, "kiosk-1", "wrong", "kiosk-1")
    assert not attempt(site, "stranger", token, "stranger")
    assert not attempt(site, "", "", "kiosk-1")  # no credentials: the server refuses it itself
    site.devices.revoke("kiosk-1")
    assert not attempt(site, "kiosk-1", token, "kiosk-1")
    assert refused_count("wrong_secret") - counts["wrong_secret"] == 1
    assert refused_count("unknown_device") - counts["unknown_device"] == 1
    assert refused_count("revoked_device") - counts["revoked_device"] == 1


def test_revoked_and_reissued_devices_are_disconnected(site: Site) -> None:
    token = site.devices.add("kiosk-7", DeviceRole.KIOSK)
    site.devices.add("kiosk-8", DeviceRole.KIOSK)
    token8 = site.devices.add("kiosk-9", DeviceRole.KIOSK)
    seven = connect(site, "kiosk-7", token, "kiosk-7")
    nine = connect(site, "kiosk-9", token8, "kiosk-9-a")
    dropped = {name: threading.Event() for name in ("seven", "nine")}
    seven.client.on_disconnect = lambda *_a: dropped["seven"].set()
    nine.client.on_disconnect = lambda *_a: dropped["nine"].set()
    try:
        assert seven.admitted and nine.admitted
        assert site.auth.enforce() == []  # nothing changed: nobody is touched
        site.devices.revoke("kiosk-7")
        kicked = site.auth.enforce()
        assert len(kicked) == 1
        assert dropped["seven"].wait(10), "the broker kept a revoked device connected"
        assert not dropped["nine"].is_set()
        assert not attempt(site, "kiosk-7", token, "kiosk-7")
        # Re-issued (revoked, then added again): the old secret's connection goes too.
        site.devices.revoke("kiosk-9")
        site.devices.add("kiosk-9", DeviceRole.KIOSK)
        assert len(site.auth.enforce()) == 1
        assert dropped["nine"].wait(10)
    finally:
        seven.close()
        nine.close()


def test_each_refusal_is_counted_once(site: Site) -> None:
    """The broker closes a refused client with "Authentication Failure"; the watcher of closed
    connections must not count what the auth service already counted."""
    token = site.devices.add("kiosk-1", DeviceRole.KIOSK)
    owned_before, other_before = refused_count("client_id_not_owned"), refused_count("not_authorized")
    # A wrong internal password never reaches the auth service: only the watcher sees it.
    assert not attempt(site, site.access.internal.user, "wrong", "watch-me")
    assert not attempt(site, "kiosk-1", token, site.door_client_id("capture"))

    async def watch_a_while() -> None:
        task = asyncio.create_task(watch_auth_failures(
            site.server.config.monitor_url, every_s=0.1, skip=site.auth.refused))
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(watch_a_while())
    assert refused_count("client_id_not_owned") - owned_before == 1
    assert refused_count("not_authorized") - other_before == 1


# --------------------------------------------------------------------------- case 14


def test_case_14_the_edges_session_survives_takeover_attempts(site: Site) -> None:
    """Captures acknowledged to a kiosk all reach the spool while another registered device
    keeps trying to connect with the edge's capture door client id (a clean session, which
    used to replace the door's persistent session and drop what it held)."""
    kiosk_token = site.devices.add("kiosk-a", DeviceRole.KIOSK)
    impostor_token = site.devices.add("kiosk-b", DeviceRole.KIOSK)
    door_id = site.door_client_id("capture")
    door_drops = threading.Event()
    capture_door = site.doors[0]
    capture_door.client.on_disconnect = lambda *_a: door_drops.set()
    attempts: list[bool] = []
    stop = threading.Event()

    def impostor() -> None:
        while not stop.is_set():
            attempts.append(attempt(site, "kiosk-b", impostor_token, door_id))

    hammer = threading.Thread(target=impostor, daemon=True)
    hammer.start()
    kiosk = connect(site, "kiosk-a", kiosk_token, "kiosk-a-pub")
    try:
        # 1. The door is up: the impostor keeps trying while the kiosk sends 10.
        infos = [kiosk.capture("kiosk-a", i) for i in range(10)]
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        wait_until(lambda: site.spool.stats().items == 10, what="10 live captures spooled")
        assert not door_drops.is_set(), "the capture door lost its connection"

        # 2. The case as reported: the edge is not consuming (door offline, its persistent
        # session holds what the broker acknowledged) while the impostor keeps trying.
        for door in site.doors:
            door.stop()
        infos = [kiosk.capture("kiosk-a", i) for i in range(10, 20)]
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        seen = len(attempts)
        wait_until(lambda: len(attempts) >= seen + 3, what="more takeover attempts")
        site.doors = start_doors(site.settings, site.gateway, site.access)
        wait_until(lambda: site.spool.stats().items == 20, what="the 10 held captures spooled")
    finally:
        stop.set()
        hammer.join(15)
        kiosk.close()
    assert attempts and not any(attempts), "an impostor got in with the edge's client id"
