"""Devices' doors of a real site over real TLS, judged by stock clients: paho with a CA file
(MQTT over TLS and secure WebSockets), httpx, `openssl s_client`; identities that cannot be
borrowed, rate limits, error answers. The site and its core are the package's `secure` fixture
(tests/support/secure_site.py)."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from edge2core.common import topics
from edge2core.edge.mqtt_door import MqttEndpoint, make_client
from edge2core.sim.devices import Kiosk, Shopper
from edge2core.sim.photos import SyntheticCatalogue
from tests.support.secure_site import (
    ADMIN,
    NOT_AUTHORISED,
    SITE,
    TOKENS,
    Secure,
    connack,
    endpoint,
    leafnodes,
    metric,
    mqtt_connects,
    photo,
)
from tests.support.tls import expired, foreign
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- the secure path works


def test_devices_use_mqtt_over_tls_and_secure_websockets_and_photos_reach_the_core_over_mtls(
    secure: Secure,
) -> None:
    source = SyntheticCatalogue(2, seed=5)
    photos = source.photos("train", source.products()[0], 2)
    kiosk = Kiosk(endpoint(secure, "kiosk-1"), SITE, "kiosk-1")
    try:
        assert kiosk.send(photos) == 2
    finally:
        kiosk.close()
    # The site forwarded them over HTTPS with its certificate and token: the core stored them.
    stats = lambda: secure.core_get("/v1/stats", token=ADMIN).json()["by_source"].get("kiosk", 0)
    wait_until(lambda: stats() >= 2, 60, "the photos at the core", every=0.2)
    shopper = Shopper(endpoint(secure, "phone-1", ws=True), SITE, "phone-1")
    try:
        reply = shopper.ask(photo())
    finally:
        shopper.close()
    assert reply.body  # answered over wss (no model yet: an error answer is still an answer)
    # The leaf link is up, over mutual TLS.
    assert leafnodes(secure.core_ports) == 1
    # The edge's HTTPS door answers with its site certificate.
    with httpx.Client(verify=secure.pki.client_context(), timeout=10) as http:
        assert http.get(f"{secure.edge_ports.https_url}/healthz").status_code == 200


def test_openssl_s_client_verifies_every_tls_door(secure: Secure) -> None:
    doors = {"core https": secure.core_ports.http, "edge https": secure.edge_ports.http,
             "mqtt": secure.edge_ports.mqtt}
    for door, port in doors.items():
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", secure.pki.ca_file,
             "-verify_return_error", "-brief"],
            input="", capture_output=True, text=True, timeout=30, check=False)
        text = out.stdout + out.stderr
        assert "Verification: OK" in text, (door, text)
        assert re.search(r"Protocol version: TLSv1\.[23]", text), (door, text)


# --------------------------------------------------------------------------- plain text refused


def test_plain_text_is_refused_where_tls_is_required(secure: Secure) -> None:
    for url in (secure.core_ports.url, secure.edge_ports.url):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=5)
    plain = endpoint(secure, "kiosk-1", ca=None)
    assert not mqtt_connects(plain, "kiosk-1-plain")
    assert not mqtt_connects(endpoint(secure, "phone-1", ws=True, ca=None), "phone-1-plain")


# --------------------------------------------------------------------------- bad certificates


def test_devices_with_unknown_expired_revoked_or_no_certificates_are_refused(secure: Secure) -> None:
    good = endpoint(secure, "kiosk-1")
    assert mqtt_connects(good, "kiosk-1-good")
    bad = {
        "unknown": foreign(secure.root / "other-ca", "device", "kiosk-1"),
        "expired": expired(secure.pki, "device", "kiosk-old"),
        "revoked": secure.pki.device("kiosk-gone"),
    }
    for why, cert in bad.items():
        for ws in (False, True):
            door = endpoint(secure, "kiosk-gone" if why == "revoked" else "kiosk-1", ws=ws, cert=cert)
            # Unknown and expired: refused at the TLS handshake (no CONNACK). Revoked: the broker
            # pins nothing (issuing or revoking must not reload it), so the auth callout refuses
            # it at CONNECT, over WebSockets too (the device holds no valid certificate).
            expected = NOT_AUTHORISED if why == "revoked" else None
            assert connack(door, f"kiosk-x-{why}") == expected, (why, ws)
    # No certificate at all, right password: refused too (device certificates are required).
    no_cert = MqttEndpoint("127.0.0.1", secure.edge_ports.mqtt, "tcp", "kiosk-1", secure.devices["kiosk-1"],
                           ca_file=secure.pki.ca_file)
    assert not mqtt_connects(no_cert, "kiosk-1-nocert")


def test_a_device_certificate_stands_in_for_its_password_and_only_for_its_own_id(secure: Secure) -> None:
    cert = secure.pki.device("kiosk-1")

    def by_cert(username: str | None, client_id: str, ws: bool = False) -> bool:
        port = secure.edge_ports.mqtt_ws if ws else secure.edge_ports.mqtt
        door = MqttEndpoint("127.0.0.1", port, "websockets" if ws else "tcp", username, None,
                            ca_file=secure.pki.ca_file, certfile=cert[0], keyfile=cert[1])
        return mqtt_connects(door, client_id)

    assert by_cert("kiosk-1", "kiosk-1-cert")
    assert by_cert(None, "kiosk-1-anon")  # no username: the certificate names it
    assert not by_cert("kiosk-2", "kiosk-2-borrowed")  # another device's id: refused
    assert not by_cert("kiosk-1", "kiosk-2-taken")  # another device's client id: refused
    assert not by_cert("kiosk-1", "e2c-site-a-capture")  # the edge's own client ids: refused


def test_a_device_cannot_subscribe_to_another_devices_answers(secure: Secure) -> None:
    client = make_client(endpoint(secure, "phone-1"), "phone-1-nosy")
    granted: list[list[bool]] = []
    client.on_subscribe = lambda _c, _u, _mid, codes, _p=None: granted.append([not c.is_failure for c in codes])
    client.connect("127.0.0.1", secure.edge_ports.mqtt, keepalive=30)
    client.loop_start()
    try:
        client.subscribe([(topics.answer_topic(SITE, "phone-1", "+"), 1),  # its own: granted
                          (topics.answer_topic(SITE, "kiosk-1", "+"), 1),  # another's: refused
                          (topics.error_topic(SITE, "kiosk", "kiosk-1"), 1)])
        wait_until(lambda: granted, 20, "the SUBACK", every=0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    assert granted[0] == [True, False, False]



def test_error_answers_show_no_paths_tracebacks_or_internals(secure: Secure) -> None:
    answers = [
        secure.core_get("/v1/no-such-thing", token=ADMIN),
        secure.core_get("/v1/models/not-a-number", token=ADMIN),
        secure.core_get("/v1/datasets/999999", token=ADMIN),
        secure.core_get("/v1/models"),
    ]
    with httpx.Client(verify=secure.pki.client_context(secure.pki.site(SITE)), timeout=10) as http:
        auth = {"Authorization": f"Bearer {TOKENS[SITE]}"}
        answers.append(http.put(f"{secure.core_ports.https_url}/v1/images/{'1' * 64}", content=b"junk",
                                headers={**auth, "X-E2C-Meta": "{not json"}))
        answers.append(http.patch(f"{secure.core_ports.https_url}/v1/uploads/{'2' * 64}", content=b"x",
                                  headers={**auth, "Upload-Offset": "-5", "Tus-Resumable": "1.0.0"}))
    with httpx.Client(verify=secure.pki.client_context(), timeout=10) as http:
        bearer = {"Authorization": f"Bearer {secure.devices['phone-1']}"}
        answers.append(http.post(f"{secure.edge_ports.https_url}/v1/recognize", content=b"\xff\xd8junk",
                                 headers=bearer))
        answers.append(http.post(f"{secure.edge_ports.https_url}/v1/photos?sku=../../etc", content=b"x",
                                 headers=bearer))
        answers.append(http.get(f"{secure.edge_ports.https_url}/v1/nothing"))
    for answer in answers:
        assert answer.status_code >= 400, answer.text
        body = answer.json()
        assert set(body) >= {"error", "detail"}, body
        text = answer.text
        for leak in ("Traceback", "/work/", "/tmp/", "site-packages", ".py\"", 'File "', str(secure.root)):
            assert leak not in text, (answer.request.url, text)



def test_a_device_over_its_rate_is_refused_at_every_door_and_others_are_not(secure: Secure) -> None:
    ctx = secure.pki.client_context()
    url = f"{secure.edge_ports.https_url}/v1/photos?sku=SKU-1"
    jpeg = photo()
    with httpx.Client(verify=ctx, timeout=30) as http:
        bearer = lambda d: {"Authorization": f"Bearer {secure.devices[d]}"}
        statuses = [http.post(url, content=jpeg, headers=bearer("kiosk-2")).status_code for _ in range(6)]
        assert statuses == [201] + [200] * 5  # the burst: stored (then duplicates)
        refused = http.post(url, content=jpeg, headers=bearer("kiosk-2"))
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        # Another device is unaffected.
        assert http.post(url, content=jpeg, headers=bearer("kiosk-1")).status_code in (200, 201)
        # MQTT: the same device's capture is refused with the same reason, and counted.
        before = metric(http.get(f"{secure.edge_ports.https_url}/metrics").text,
                         "e2c_rate_limited_total", door="mqtt")
        kiosk = Kiosk(endpoint(secure, "kiosk-2"), SITE, "kiosk-2")
        try:
            source = SyntheticCatalogue(2, seed=5)
            kiosk.send(source.photos("train", source.products()[1], 1))  # acknowledged, refused
        finally:
            kiosk.close()
        wait_until(lambda: metric(http.get(f"{secure.edge_ports.https_url}/metrics").text,
                                   "e2c_rate_limited_total", door="mqtt") > before,
                   20, "the MQTT refusal counted", every=0.2)

