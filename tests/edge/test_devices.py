"""Device identity: only registered devices get in, each only under its own topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from edge2core.common import envelope, topics
from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig, NatsUser
from edge2core.config import EdgeSettings
from edge2core.edge.api import create_edge_app
from edge2core.edge.broker_auth import BrokerAuth
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.devices import DeviceRefused, DeviceRegistry, DeviceRole, device_permissions
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.service import SiteAccess, edge_nats_config, start_doors
from edge2core.edge.spool import Spool
from edge2core.sim.photos import SyntheticCatalogue
from edge2core.sim.synthetic import render_photo
from tests.support import waiting

SITE = "store-9"


wait_until = partial(waiting.wait_until, timeout=15.0, every=0.05)


# --- the registry ------------------------------------------------------------------------


def test_registry_issues_secrets_and_keeps_only_hashes(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    token = registry.add("kiosk-1", DeviceRole.KIOSK)
    assert token not in (tmp_path / "devices.json").read_text()
    assert registry.authenticate(token).id == "kiosk-1"
    with pytest.raises(DeviceRefused) as unknown:
        registry.authenticate("not-a-token")
    assert unknown.value.reason == "unknown_device"

    registry.revoke("kiosk-1")
    with pytest.raises(DeviceRefused) as revoked:
        registry.authenticate(token)
    assert revoked.value.reason == "revoked_device"
    # Re-issuing after revocation gives a new secret; the old one stays dead.
    fresh = registry.add("kiosk-1", DeviceRole.KIOSK)
    assert fresh != token and registry.authenticate(fresh).id == "kiosk-1"


def test_registry_refuses_bad_ids_and_double_registration(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    registry.add("kiosk-1", DeviceRole.KIOSK)
    with pytest.raises(ValueError, match="revoke it first"):
        registry.add("kiosk-1", DeviceRole.KIOSK)
    for bad in ("kiosk.1", "a/b", "", "-x"):
        with pytest.raises(ValueError, match="must match"):
            registry.add(bad, DeviceRole.KIOSK)
    with pytest.raises(KeyError):
        registry.revoke("nobody")


def test_a_second_registry_sees_changes_made_by_another_process(tmp_path: Path) -> None:
    running = DeviceRegistry(tmp_path / "devices.json")  # the edge's copy
    cli = DeviceRegistry(tmp_path / "devices.json")  # what `edge devices add` uses
    token = cli.add("phone-1", DeviceRole.SHOPPER)
    assert running.refresh() is True
    assert running.authenticate(token).role == DeviceRole.SHOPPER
    assert running.refresh() is False


def test_broker_permissions_cover_only_the_devices_own_topics(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    registry.add("kiosk-1", DeviceRole.KIOSK)
    (device,) = registry.list()
    assert device.password_bcrypt.startswith("$2")
    publish, subscribe = device_permissions(SITE, device)
    assert publish == ("e2c.store-9.kiosk.kiosk-1.>",)
    # MQTT's `<prefix>/#` is two NATS subscriptions: the prefix itself and everything below.
    assert subscribe == ("e2c.store-9.kiosk.kiosk-1", "e2c.store-9.kiosk.kiosk-1.>")


@pytest.mark.parametrize(("client_id", "owner"), [
    ("kiosk-1", "kiosk-1"),
    ("kiosk-1-2", "kiosk-1"),
    ("kiosk-1-pub-x", "kiosk-1"),
    ("kiosk-12", "kiosk"),  # kiosk's, until a device kiosk-12 is registered
    ("kiosk1-x", None),  # no '-' right after a registered id: nobody's
    ("kiosk-1-7", "kiosk-1-7"),  # the longest registered id wins
    ("kiosk-1-7-b", "kiosk-1-7"),
    ("kiosk", "kiosk"),
    ("e2c-store-9-capture-0a1b", None),  # the edge's own
    ("e2c", None),
    ("paho1234", None),
    ("", None),
])
def test_client_ids_belong_to_the_device_whose_id_they_start_with(client_id: str, owner) -> None:
    from edge2core.edge.devices import client_id_owner, owns_client_id

    ids = ["kiosk", "kiosk-1", "kiosk-1-7"]
    assert client_id_owner(client_id, ids) == owner
    for device in ids:
        assert owns_client_id(device, client_id, ids) == (device == owner)


def test_broker_check_refuses_with_a_reason(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    token = registry.add("kiosk-1", DeviceRole.KIOSK)
    registry.add("kiosk-1-b", DeviceRole.KIOSK)
    assert registry.authenticate_broker("kiosk-1", token, "kiosk-1").id == "kiosk-1"
    assert registry.authenticate_broker("kiosk-1", token, "kiosk-1-x").id == "kiosk-1"
    assert registry.authenticate_broker("kiosk-1", token, None).id == "kiosk-1"  # not MQTT
    for user, secret, client_id, reason in [
        ("nobody", token, "nobody", "unknown_device"),
        ("kiosk-1", "wrong", "kiosk-1", "wrong_secret"),
        ("kiosk-1", token, "kiosk-1-b", "client_id_not_owned"),
        ("kiosk-1", token, "kiosk-1-b-2", "client_id_not_owned"),
        ("kiosk-1", token, "e2c-store-9-capture", "client_id_not_owned"),
        ("kiosk-1", token, "", "client_id_not_owned"),
    ]:
        with pytest.raises(DeviceRefused) as refused:
            registry.authenticate_broker(user, secret, client_id)
        assert refused.value.reason == reason, (user, client_id)
    registry.revoke("kiosk-1")
    with pytest.raises(DeviceRefused) as revoked:
        registry.authenticate_broker("kiosk-1", token, "kiosk-1")
    assert revoked.value.reason == "revoked_device"


def test_device_ids_cannot_take_the_edges_client_id_namespace(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    for bad in ("e2c", "e2c-store-9"):
        with pytest.raises(ValueError, match="the edge's own"):
            registry.add(bad, DeviceRole.KIOSK)
    registry.add("e2cam", DeviceRole.KIOSK)  # only the exact prefix is reserved


# --- the HTTP door -------------------------------------------------------------------------


@pytest.fixture
def http_site(tmp_path: Path) -> Iterator[tuple[TestClient, DeviceRegistry, Spool]]:
    registry = DeviceRegistry(tmp_path / "devices.json")
    spool = Spool(tmp_path / "spool", 10_000_000)
    recognizer = Recognizer(CatalogueReplica(tmp_path / "catalogue.json"))
    gateway = Gateway(Intake(SITE, PreparePolicy(), spool), recognizer)
    app = create_edge_app(gateway, SITE, lambda: {}, 8_000_000, devices=registry)
    with TestClient(app) as client:
        yield client, registry, spool
    gateway.close()
    spool.close()


def _post(client: TestClient, token: str | None, **params: str):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/v1/photos", params={"sku": "SKU-0001", **params},
                       content=render_photo(1, 1), headers=headers)


def test_http_takes_the_device_from_its_token(http_site) -> None:
    client, registry, spool = http_site
    token = registry.add("kiosk-4", DeviceRole.KIOSK)
    response = _post(client, token)
    assert response.status_code == 201, response.text
    (item,) = spool.pending(10)
    assert item.record.device == "kiosk-4"


@pytest.mark.parametrize("case", ["no_token", "unknown", "revoked", "other_device", "wrong_role"])
def test_http_refuses_unknown_revoked_and_impostor_devices(http_site, case: str) -> None:
    client, registry, spool = http_site
    kiosk = registry.add("kiosk-4", DeviceRole.KIOSK)
    phone = registry.add("phone-4", DeviceRole.SHOPPER)
    if case == "revoked":
        registry.revoke("kiosk-4")
    token, params, status, reason = {
        "no_token": (None, {}, 401, "unknown_device"),
        "unknown": ("forged", {}, 401, "unknown_device"),
        "revoked": (kiosk, {}, 403, "revoked_device"),
        "other_device": (kiosk, {"device": "kiosk-5"}, 403, "wrong_device"),
        "wrong_role": (phone, {}, 403, "wrong_role"),
    }[case]
    response = _post(client, token, **params)
    assert response.status_code == status
    assert response.json()["error"] == reason
    assert spool.stats().items == 0
    metrics = client.get("/metrics").text
    assert f'e2c_devices_refused_total{{door="http",reason="{reason}"}}' in metrics


# --- the MQTT door on a broker with device users ---------------------------------------------


@pytest.fixture
def mqtt_site(tmp_path: Path) -> Iterator[tuple[BrokerAuth, SiteAccess, EdgeSettings, Spool]]:
    probe = NatsServerConfig.with_free_ports("probe", tmp_path / "js")
    settings = EdgeSettings(
        site=SITE, data_dir=tmp_path / "edge", mqtt_port=probe.mqtt_port,
        mqtt_ws_port=probe.websocket_port, nats_port=probe.client_port,
        nats_http_port=probe.http_port, core_leaf_url=None,
    )
    registry = DeviceRegistry(settings.data_dir / "devices.json")
    access = SiteAccess(registry, NatsUser("e2c-edge-internal", "internal-secret"))
    server = EmbeddedNats(edge_nats_config(settings, access), tmp_path / "run").start()
    auth = access.broker_auth(SITE, server.client_url)
    assert auth is not None
    auth.start()
    spool = Spool(tmp_path / "spool", 50_000_000)
    gateway = Gateway(Intake(SITE, PreparePolicy(), spool), Recognizer(CatalogueReplica(tmp_path / "c.json")))
    doors = start_doors(settings, gateway, access)
    yield auth, access, settings, spool
    for door in doors:
        door.stop()
    gateway.close()
    spool.close()
    auth.stop()
    server.stop()


def _connect(port: int, user: str, password: str) -> tuple[mqtt.Client, object]:
    # Client id = the device id: a device may use only client ids of its own.
    client = make_client(MqttEndpoint("127.0.0.1", port, username=user, password=password), user)
    answered = threading.Event()
    result: dict[str, object] = {}

    def on_connect(_c, _u, _f, reason, _p) -> None:
        result["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert answered.wait(10)
    return client, result["reason"]


def _admitted(port: int, user: str, password: str) -> bool:
    client, reason = _connect(port, user, password)
    client.disconnect()
    client.loop_stop()
    return not reason.is_failure


def test_mqtt_admits_registered_devices_only_and_only_under_their_topics(mqtt_site) -> None:
    _auth, access, settings, spool = mqtt_site
    token = access.devices.add("kiosk-1", DeviceRole.KIOSK)

    # No broker reload: the auth service reads the registry on each connect.
    assert _admitted(settings.mqtt_port, "kiosk-1", token)
    kiosk, _ = _connect(settings.mqtt_port, "kiosk-1", token)
    try:
        product = SyntheticCatalogue(2).products()[0]
        own = kiosk.publish(topics.capture_topic(SITE, "kiosk-1"),
                            envelope.encode(render_photo(0, 5), {"sku": product.sku}), qos=1)
        own.wait_for_publish(10)
        assert own.is_published()
        wait_until(lambda: spool.stats().items == 1, what="the kiosk's own capture")
        # Publishing as another device is dropped by the broker, never spooled.
        kiosk.publish(topics.capture_topic(SITE, "kiosk-2"),
                      envelope.encode(render_photo(0, 6), {"sku": product.sku}), qos=1)
        time.sleep(1.0)  # nothing to wait for: the point is that nothing arrives
        assert spool.stats().items == 1
    finally:
        kiosk.disconnect()
        kiosk.loop_stop()

    for user, password in (("kiosk-1", "wrong"), ("stranger", "x")):
        assert not _admitted(settings.mqtt_port, user, password), user


def test_revoked_device_is_disconnected_and_cannot_come_back(mqtt_site) -> None:
    auth, access, settings, _spool = mqtt_site
    token = access.devices.add("kiosk-7", DeviceRole.KIOSK)
    assert _admitted(settings.mqtt_port, "kiosk-7", token)
    client, _ = _connect(settings.mqtt_port, "kiosk-7", token)
    dropped = threading.Event()
    client.on_disconnect = lambda *_a: dropped.set()
    client.reconnect_delay_set(30, 60)  # we only watch the first drop

    access.devices.revoke("kiosk-7")
    assert auth.enforce() != []  # what `watch_devices` does every 2 s
    assert dropped.wait(10), "the broker kept a revoked device connected"
    client.loop_stop()
    wait_until(lambda: not _admitted(settings.mqtt_port, "kiosk-7", token), what="kiosk-7 refused")


def test_auth_failures_are_counted_once_each() -> None:
    from edge2core.edge.broker_watch import auth_failures_since

    connz = {"connections": [
        {"cid": 5, "reason": "Authentication Failure", "mqtt_client": "x"},
        {"cid": 6, "reason": "Client Closed"},
        {"cid": 8, "reason": "Authentication Failure", "mqtt_client": "y"},
    ]}
    failures, last = auth_failures_since(connz, 0)
    assert [f["mqtt_client"] for f in failures] == ["x", "y"] and last == 8
    assert auth_failures_since(connz, last) == ([], 8)
    assert auth_failures_since({"connections": None}, 3) == ([], 3)
