"""A real core and a real site (`core up`, `edge up` as processes) with TLS on every link, a
private CA made for the run, site tokens, an admin token, device certificates and tight rate
limits: what tests/security's end-to-end tests run against (the `secure` fixture, one per
package run, in tests/security/conftest.py).

The CA holds two good sites (`site-a` runs, `site-b` is for tests that act as a second site),
a revoked site, and devices `kiosk-1`, `kiosk-2`, `phone-1` and a revoked `kiosk-gone`.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import nats.aio.client

from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.roles import CorePorts, EdgePorts, RoleProcess, start_core, start_edge
from edge2core.sim.photos import SyntheticCatalogue
from tests.support.tls import Pki, make_pki
from tests.support.waiting import wait_until

SITE, OTHER = "site-a", "site-b"
ADMIN = "admin-token-for-the-security-tests"
TOKENS = {SITE: "token-of-site-a-0123456789", OTHER: "token-of-site-b-0123456789"}
# Slow refills: what a test spends stays spent for the run (bursts are what count).
DEVICE_RATE = {"messages_per_s": 0.01, "burst_messages": 6, "bytes_per_s": 1e6, "burst_bytes": 1e8}
SITE_RATE = {"messages_per_s": 0.01, "burst_messages": 12, "bytes_per_s": 1e6, "burst_bytes": 1e9}


@dataclass
class Secure:
    pki: Pki
    core: RoleProcess
    core_ports: CorePorts
    edge: RoleProcess
    edge_ports: EdgePorts
    devices: dict[str, str]  # id -> secret
    root: Path

    def core_get(self, path: str, *, cert: tuple[str, str] | None = None, token: str | None = None,
                 ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(verify=self.pki.client_context(cert), timeout=10) as http:
            return http.get(f"{self.core_ports.https_url}{path}", headers=headers)


def secure_site(root: Path) -> Iterator[Secure]:
    """Start the core and the site under `root`; yields them; stops them."""
    pki = make_pki(root / "ca", sites=(SITE, OTHER, "site-revoked"),
                   devices=("kiosk-1", "kiosk-2", "phone-1", "kiosk-gone"))
    pki.ca.revoke("site", "site-revoked")
    pki.ca.revoke("device", "kiosk-gone")
    registry = DeviceRegistry(root / "edge" / "devices.json")
    devices = {"kiosk-1": registry.add("kiosk-1", DeviceRole.KIOSK),
               "kiosk-2": registry.add("kiosk-2", DeviceRole.KIOSK),
               "kiosk-gone": registry.add("kiosk-gone", DeviceRole.KIOSK),
               "phone-1": registry.add("phone-1", DeviceRole.SHOPPER)}
    core, core_ports = start_core(root / "core", tls=pki.folder, extra_env={
        "E2C_CORE_ADMIN_TOKEN": ADMIN, "E2C_CORE_SITE_TOKENS": json.dumps(TOKENS),
        "E2C_CORE_AUTOMATION": json.dumps({"enabled": False}), "E2C_CORE_TLS_CHECK_S": "0.5",
        "E2C_CORE_SITE_RATE": json.dumps(SITE_RATE)})
    edge = None
    try:
        core.wait_healthy()
        edge, edge_ports = start_edge(SITE, root / "edge", core_ports, tls=pki.folder, extra_env={
            "E2C_EDGE_TOKEN": TOKENS[SITE], "E2C_EDGE_DEVICE_CERTS": "true",
            "E2C_EDGE_BLUR_FACES": "false", "E2C_EDGE_TLS_CHECK_S": "0.5",
            "E2C_EDGE_DEVICE_RATE": json.dumps(DEVICE_RATE)})
        edge.wait_healthy()
        yield Secure(pki, core, core_ports, edge, edge_ports, devices, root)
    finally:
        if edge is not None:
            edge.stop()
        core.stop()


def leafnodes(ports: CorePorts) -> int:
    return int(httpx.get(f"http://127.0.0.1:{ports.nats_http}/varz", timeout=5).json()["leafnodes"])


def endpoint(s: Secure, device: str, *, ws: bool = False, cert: tuple[str, str] | None = None,
              ca: str | None = "") -> MqttEndpoint:
    cert = cert or s.pki.device(device)
    return MqttEndpoint("127.0.0.1", s.edge_ports.mqtt_ws if ws else s.edge_ports.mqtt,
                        "websockets" if ws else "tcp", device, s.devices[device],
                        ca_file=s.pki.ca_file if ca == "" else ca, certfile=cert[0], keyfile=cert[1])


NOT_AUTHORISED = "Not authorized"  # paho's name for CONNACK rc 5 (MQTT 3.1.1)


def connack(endpoint: MqttEndpoint, client_id: str, timeout: float = 10.0) -> str | None:
    """The broker's answer to one CONNECT (paho, over TLS when the endpoint says): "Success",
    `NOT_AUTHORISED`, ...; None when no CONNACK came (TLS handshake refused, connection closed)."""
    client = make_client(endpoint, client_id)
    client.reconnect_delay_set(60, 120)  # one attempt is the question
    outcome: list[str | None] = []
    client.on_connect = lambda _c, _u, _f, rc, _p=None: outcome.append(str(rc))
    client.on_disconnect = lambda *_a: outcome.append(None)
    try:
        client.connect(endpoint.host, endpoint.port, keepalive=30)
    except (OSError, ssl.SSLError):
        return None
    client.loop_start()
    try:
        wait_until(lambda: outcome, timeout, "an answer to CONNECT", every=0.05)
    except TimeoutError:
        return None
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0]


def mqtt_connects(endpoint: MqttEndpoint, client_id: str, timeout: float = 10.0) -> bool:
    """Whether the broker answers CONNECT with success."""
    return connack(endpoint, client_id, timeout) == "Success"


def photo() -> bytes:
    source = SyntheticCatalogue(2, seed=5)
    product = source.products()[0]
    return source.photos("train", product, 1)[0].data

def metric(text: str, name: str, **labels: str) -> float:
    """The value of the first sample of `name` carrying `labels` (0 when there is none yet)."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0



async def core_client(secure: Secure) -> nats.aio.client.Client:
    """The core's own broker user (its password is in the 0600 server config)."""
    conf = (secure.root / "core" / "nats" / "e2c-core.conf").read_text()
    password = re.search(r'user: "e2c-core-internal", password: "([^"]+)"', conf)
    assert password is not None
    return await nats.connect(f"nats://127.0.0.1:{secure.core_ports.nats}", user="e2c-core-internal",
                              password=password.group(1))

