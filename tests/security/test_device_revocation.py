"""Device certificates revoked and issued while devices stay connected, at a real site over real
TLS (the package's `secure` fixture) with stock paho clients.

The broker pins no device certificate: the auth callout refuses revoked ones (`device_certs`),
so issuing or revoking one never reloads nats-server, whose every reload closes all the devices
its auth callout admitted (nats-server 2.15.1). Revoking device A's certificate closes A's
connections within seconds and refuses A at CONNECT on MQTT/TLS (its certificate) and on secure
WebSockets (its password; nats-server passes no certificate to the callout there), while device
B keeps the very connection it had; a device issued a certificate meanwhile connects at once.
The devices here are this file's own: nothing else in the package uses them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from edge2core.common.certs import cert_fingerprint, read_cert
from edge2core.common.nats_config import render_config
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.tls import site_tls_files
from edge2core.config import EdgeSettings
from edge2core.edge.broker_config import edge_nats_config, site_access
from edge2core.edge.device_certs import DeviceCertIndex
from edge2core.edge.devices import DeviceRefused, DeviceRegistry, DeviceRole
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.edge.tls_wiring import BrokerReload
from tests.support.secure_site import NOT_AUTHORISED, Secure, connack
from tests.support.tls import make_pki
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_RELOADED = "nothing the broker loads changed"


class Held:
    """A paho client that stays connected (reconnecting by itself, as devices do), recording
    every CONNACK and every disconnect."""

    def __init__(self, door: MqttEndpoint, client_id: str) -> None:
        self.client = make_client(door, client_id)
        self.client.reconnect_delay_set(1, 2)
        self.connacks: list[str] = []
        self.drops = 0
        self._lock = threading.Lock()
        self.client.on_connect = lambda _c, _u, _f, rc, _p=None: self._note(str(rc))
        self.client.on_disconnect = lambda *_a: self._note(None)
        self.client.connect(door.host, door.port, keepalive=30)
        self.client.loop_start()
        wait_until(lambda: self.connacks, 20, f"{client_id} connected", every=0.05)
        assert self.connacks == ["Success"], (client_id, self.connacks)

    def _note(self, connack: str | None) -> None:
        with self._lock:
            if connack is None:
                self.drops += 1
            else:
                self.connacks.append(connack)

    @property
    def untouched(self) -> bool:
        """Connected since the start, on the same connection (never dropped, never redone)."""
        return self.drops == 0 and self.connacks == ["Success"] and self.client.is_connected()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _door(s: Secure, device: str, secret: str | None, *, ws: bool = False) -> MqttEndpoint:
    cert, key = s.pki.device(device)
    port = s.edge_ports.mqtt_ws if ws else s.edge_ports.mqtt
    return MqttEndpoint("127.0.0.1", port, "websockets" if ws else "tcp", device, secret,
                        ca_file=s.pki.ca_file, certfile=cert, keyfile=key)


def _config_loaded(s: Secure) -> str:
    """When the site's nats-server last (re)loaded its config (its /varz)."""
    varz = httpx.get(f"http://127.0.0.1:{s.edge_ports.nats_http}/varz", timeout=5).json()
    return str(varz["config_load_time"])


def _not_reloaded(s: Secure) -> int:
    return s.edge.log_path.read_text(errors="replace").count(NOT_RELOADED)


def test_a_revoked_device_is_cut_off_on_every_door_and_nobody_else_is_touched(secure: Secure) -> None:
    registry = DeviceRegistry(secure.root / "edge" / "devices.json")
    secrets = {d: registry.add(d, DeviceRole.KIOSK) for d in ("till-a", "till-b", "till-c")}
    for device in ("till-a", "till-b"):
        secure.pki.ca.issue("device", device)
    loaded = _config_loaded(secure)
    held = {
        "a-tls": Held(_door(secure, "till-a", None), "till-a-tls"),  # the certificate is the login
        "a-wss": Held(_door(secure, "till-a", secrets["till-a"], ws=True), "till-a-wss"),
        "b-tls": Held(_door(secure, "till-b", None), "till-b-tls"),
        "b-wss": Held(_door(secure, "till-b", secrets["till-b"], ws=True), "till-b-wss"),
    }
    try:
        # A new device's certificate: it connects at once, and nobody else is touched.
        secure.pki.ca.issue("device", "till-c")
        assert connack(_door(secure, "till-c", None), "till-c-tls") == "Success"
        assert connack(_door(secure, "till-c", secrets["till-c"], ws=True), "till-c-wss") == "Success"

        # A's certificate revoked: A's connections are closed within seconds, on both doors.
        seen = _not_reloaded(secure)
        secure.pki.ca.revoke("device", "till-a")
        wait_until(lambda: held["a-tls"].drops and held["a-wss"].drops, 30, "A's connections closed",
                   every=0.1)
        # ... and A is refused at CONNECT (not at the handshake: no pins) on every door, its
        # own reconnects included; a password does not get round it.
        assert connack(_door(secure, "till-a", None), "till-a-again") == NOT_AUTHORISED
        assert connack(_door(secure, "till-a", secrets["till-a"]), "till-a-pw") == NOT_AUTHORISED
        assert connack(_door(secure, "till-a", secrets["till-a"], ws=True), "till-a-ws2") == NOT_AUTHORISED
        wait_until(lambda: held["a-tls"].connacks[1:] and held["a-wss"].connacks[1:], 30,
                   "A's own reconnects answered", every=0.1)
        assert set(held["a-tls"].connacks[1:] + held["a-wss"].connacks[1:]) == {NOT_AUTHORISED}
        # The site saw the CRL rewritten and did not reload its broker for it.
        wait_until(lambda: _not_reloaded(secure) > seen, 30, "the site noticing the new CRL", every=0.2)

        assert held["b-tls"].untouched and held["b-wss"].untouched
        assert connack(_door(secure, "till-c", None), "till-c-after") == "Success"
        assert _config_loaded(secure) == loaded  # the broker never reloaded

        # A new certificate for A lets it back in, on both doors.
        secure.pki.ca.issue("device", "till-a")
        assert connack(_door(secure, "till-a", None), "till-a-new") == "Success"
        assert connack(_door(secure, "till-a", secrets["till-a"], ws=True), "till-a-ws3") == "Success"
        assert held["b-tls"].untouched and held["b-wss"].untouched
    finally:
        for client in held.values():
            client.close()


def test_the_cas_view_of_device_certificates_follows_its_index(tmp_path: Path) -> None:
    ca = make_pki(tmp_path / "ca", sites=("site-a",), devices=("d-1", "d-2")).ca
    index = DeviceCertIndex(ca.folder)
    print_of = lambda kind, name: cert_fingerprint(read_cert(ca.paths(kind, name)[0]))
    old, other = print_of("device", "d-1"), print_of("device", "d-2")
    assert index.stale("d-1", old) is None and index.stale("d-2", other) is None
    assert index.stale(None, print_of("site", "site-a")) is not None  # not a device's certificate
    ca.revoke("device", "d-1")
    assert index.stale(None, old) is not None  # read again: index.json changed
    assert index.stale("d-1", None) is not None  # no valid certificate left: refused on every door
    with pytest.raises(DeviceRefused) as refused:
        index.check("d-1", None)
    assert refused.value.reason == "revoked_certificate"
    assert index.stale("d-2", other) is None
    ca.issue("device", "d-1")
    assert index.stale("d-1", None) is None  # a new certificate: back in
    assert index.stale(None, old) is not None  # the revoked one stays refused
    ca.renew("device", "d-2")
    assert index.stale(None, other) is not None  # superseded by the renewal
    assert index.stale("d-2", print_of("device", "d-2")) is None
    # Without a devices/ folder nothing is decided here (any certificate from the CA passes).
    assert DeviceCertIndex(tmp_path / "no-devices").stale("d-1", old) is None


def test_device_certificates_never_change_what_the_sites_broker_loads(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "ca", sites=("site-a",), devices=("d-1",))
    settings = EdgeSettings(site="site-a", data_dir=tmp_path / "edge", core_leaf_url=None)
    access = site_access(settings).secured(site_tls_files(pki.folder, "site-a"), device_certs=True)
    render = lambda: edge_nats_config(settings, access)
    text = render_config(render())
    assert text.count("verify: true") == 2  # devices' certificates checked against the CA on both doors
    assert "pinned_certs" not in text  # and none pinned: revocation is the auth callout's
    (tmp_path / "run").mkdir()
    server = EmbeddedNats(render(), tmp_path / "run")  # not started: `reload` only rewrites its file
    assert access.tls is not None
    reload = BrokerReload(server, render, access.tls)
    pki.ca.revoke("device", "d-1")
    pki.ca.issue("device", "d-2")
    reload()
    assert reload.reloads == 0 and render_config(render()) == text
    pki.ca.renew("site", "site-a")  # the broker's own certificate: a real change
    reload()
    assert reload.reloads == 1
