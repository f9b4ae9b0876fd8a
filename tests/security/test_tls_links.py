"""The links between a real site and a real core over mutual TLS: site certificates at the
core's HTTPS and on the leaf link (nats-server itself as a leaf), the leaf link's permissions,
scoped API tokens, the signed catalogue, per-site rate limits, and certificates renewed and
revoked on disk while everything runs. The site and its core are the package's `secure`
fixture (tests/support/secure_site.py).

The tests that renew and revoke run last (this file sorts after the others that use the
fixture, and they come last in it), on certificates nothing else uses afterwards.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import time
from pathlib import Path

import httpx
import nats
import nats.aio.client
import pytest
from nats.aio.msg import Msg

from edge2core.common.certs import read_cert
from edge2core.common.events import CATALOGUE_BUCKET, DEPLOY_BUCKET, product_key
from edge2core.common.leaf_permissions import site_inbox
from edge2core.common.nats_config import NatsServerConfig, NatsTls, leaf_url_with_credentials
from edge2core.common.nats_server import EmbeddedNats
from edge2core.common.site_tokens import leaf_user
from edge2core.core.api.access import SCOPES
from edge2core.core.api.token_store import TokenStore
from tests.support.secure_site import (
    ADMIN,
    OTHER,
    SITE,
    SITE_RATE,
    TOKENS,
    Secure,
    core_client,
    leafnodes,
    metric,
)
from tests.support.tls import expired, foreign
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_sites_must_present_their_own_certificate_to_the_core(secure: Secure) -> None:
    path = "/v1/catalogue/products"
    token = TOKENS[SITE]
    assert secure.core_get(path, cert=secure.pki.site(SITE), token=token).status_code == 200
    assert secure.core_get(path, token=token).status_code == 401  # token alone: not enough
    assert secure.core_get(path, cert=secure.pki.site(OTHER), token=token).status_code == 401
    assert secure.core_get(path, cert=secure.pki.device("kiosk-1"), token=token).status_code == 401
    # People (the admin token) need no certificate.
    assert secure.core_get(path, token=ADMIN).status_code == 200
    body = secure.core_get(path, token=token).json()
    assert body["error"] == "unauthorized" and "/" not in body["detail"].replace("(mutual TLS)", "")


def test_unknown_expired_and_revoked_site_certificates_are_refused_at_the_core(secure: Secure) -> None:
    bad = {
        "unknown": foreign(secure.root / "other-ca-2", "site", SITE),
        "expired": expired(secure.pki, "site", "site-old"),
        "revoked": secure.pki.site("site-revoked"),
    }
    for why, cert in bad.items():
        # The handshake fails (TLS 1.3: the client hears it as the server hanging up): no request
        # reaches the API.
        with pytest.raises(httpx.TransportError):
            secure.core_get("/healthz", cert=cert)
        for url in (secure.edge_ports.https_url,):  # the site's own HTTPS door checks them too
            with pytest.raises(httpx.TransportError), httpx.Client(
                    verify=secure.pki.client_context(cert), timeout=10) as http:
                http.get(f"{url}/healthz")
        assert why


def _leaf(secure: Secure, name: str, cert: tuple[str, str], ca: str) -> EmbeddedNats:
    config = NatsServerConfig.with_free_ports(
        f"leaf-{name}", secure.root / f"leaf-{name}" / "js", mqtt=False, websocket=False,
        jetstream_domain=f"leaf{name.replace('-', '')}",
        leafnode_remotes=(leaf_url_with_credentials(
            f"nats-leaf://127.0.0.1:{secure.core_ports.leafnode}", leaf_user(OTHER, TOKENS[OTHER]),
            TOKENS[OTHER]),),
        tls=NatsTls(Path(cert[0]), Path(cert[1]), Path(ca)))
    return EmbeddedNats(config, secure.root / f"leaf-{name}").start()


def test_the_leaf_link_refuses_unknown_expired_and_revoked_sites(secure: Secure) -> None:
    assert leafnodes(secure.core_ports) == 1  # the real site
    bad = {
        "unknown": foreign(secure.root / "other-ca-3", "site", OTHER),
        "expired": expired(secure.pki, "site", "site-older"),
        "revoked": secure.pki.site("site-revoked"),
    }
    log = secure.root / "core" / "nats" / "e2c-core.log"
    refusals = lambda: log.read_text(errors="replace").count("TLS leafnode handshake error")
    reasons = {"unknown": "unknown authority", "expired": "expired", "revoked": "not pinned"}
    for why, cert in bad.items():
        before, offset = refusals(), len(log.read_text(errors="replace"))
        leaf = _leaf(secure, why, cert, secure.pki.ca_file)
        try:
            # The leaf keeps trying; the core refuses every handshake and says why.
            wait_until(lambda n=before: refusals() >= n + 2, 30, f"the {why} leaf's refusals", every=0.2)
            assert leafnodes(secure.core_ports) == 1, why
            assert reasons[why] in log.read_text(errors="replace")[offset:], why
        finally:
            leaf.stop()
    # The same leaf with a good certificate (and the site's token) is let in.
    leaf = _leaf(secure, "good", secure.pki.site(OTHER), secure.pki.ca_file)
    try:
        wait_until(lambda: leafnodes(secure.core_ports) == 2, 20, "the good leaf", every=0.2)
    finally:
        leaf.stop()



async def _cross_site(secure: Secure, leaf: EmbeddedNats) -> tuple[list[str], str, dict[str, bytes]]:
    """From a client of site-b's broker: publish as both sites, try to delete the core's
    deploy bucket, watch the catalogue. Returns (subjects the core got, the deletion's
    outcome, what the watch saw)."""
    core = await core_client(secure)
    site = await nats.connect(leaf.client_url, inbox_prefix=site_inbox(OTHER))
    got: list[str] = []

    async def heard(msg: Msg) -> None:
        got.append(msg.subject)

    try:
        await core.subscribe("e2c.sites.*.model", cb=heard)
        await core.flush()
        # Interest crosses the link asynchronously: publish until the core hears its own site.
        deadline = time.monotonic() + 20
        while f"e2c.sites.{OTHER}.model" not in got and time.monotonic() < deadline:
            await site.publish(f"e2c.sites.{SITE}.model", b"forged")
            await site.publish(f"e2c.sites.{OTHER}.model", b"own")
            await site.flush()
            await asyncio.sleep(0.2)
        js = site.jetstream(domain="core")
        try:
            await js.delete_stream(f"KV_{DEPLOY_BUCKET}")
            deletion = "deleted"
        except Exception as exc:  # nats.py reports the missing answer as unavailable
            deletion = type(exc).__name__
        seen: dict[str, bytes] = {}
        watcher = await (await js.key_value(CATALOGUE_BUCKET)).watchall()
        while (update := await watcher.updates(timeout=10)) is not None:
            seen[update.key] = update.value or b""
        await watcher.stop()
        return got, deletion, seen
    finally:
        await site.close()
        await core.close()


def test_a_site_publishes_only_as_itself_and_cannot_change_the_core_over_the_leaf_link(
        secure: Secure) -> None:
    with httpx.Client(verify=secure.pki.client_context(), timeout=10) as http:
        http.put(f"{secure.core_ports.https_url}/v1/catalogue/products", headers={"Authorization": f"Bearer {ADMIN}"},
                 json=[{"sku": "PERM-1", "name": "Permitted tea", "price": 2.0}]).raise_for_status()
    leaf = _leaf(secure, "perms", secure.pki.site(OTHER), secure.pki.ca_file)
    try:
        wait_until(lambda: leafnodes(secure.core_ports) == 2, 20, "site-b's leaf", every=0.2)
        got, deletion, seen = asyncio.run(_cross_site(secure, leaf))
    finally:
        leaf.stop()
    assert f"e2c.sites.{OTHER}.model" in got
    assert f"e2c.sites.{SITE}.model" not in got  # another site's subject: never reaches the core
    assert deletion != "deleted"
    assert seen  # the read side works: the catalogue, signed
    assert all(b'"signature"' in value for value in seen.values())


# --------------------------------------------------------------------------- API tokens, errors


def test_scoped_tokens_work_over_https_and_rotate_without_downtime(secure: Secure) -> None:
    store = TokenStore(secure.root / "core" / "api-tokens.json", SCOPES)
    reader, _ = store.create("dashboard", ["read"], days=1)
    assert secure.core_get("/v1/models", token=reader).status_code == 200
    with httpx.Client(verify=secure.pki.client_context(), timeout=10) as http:
        refused = http.post(f"{secure.core_ports.https_url}/v1/governance/retention",
                            headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    # Rotation: a new token works at once, the old one until it is revoked, then never.
    old, old_row = store.create("ci", ["operate"], days=1)
    new, _ = store.create("ci-2", ["operate"], days=1)
    assert secure.core_get("/v1/models", token=old).status_code == 200
    assert secure.core_get("/v1/models", token=new).status_code == 200
    store.revoke(old_row.id)
    assert secure.core_get("/v1/models", token=old).status_code == 401
    assert secure.core_get("/v1/models", token=new).status_code == 200
    assert secure.core_get("/v1/models").status_code == 401  # no token: closed



def _replica(secure: Secure) -> dict[str, float]:
    path = secure.root / "edge" / "catalogue.json"
    return {p["sku"]: p["price"] for p in json.loads(path.read_text())} if path.is_file() else {}


async def _tamper(secure: Secure, sku: str, price: float) -> None:
    """Put a forged catalogue entry straight into the core's KV bucket: an attacker who got
    onto the core's broker, or a link without TLS."""
    client = await core_client(secure)  # the attacker is on the core's broker
    try:
        kv = await client.jetstream().key_value(CATALOGUE_BUCKET)
        entry = await kv.get(product_key(sku))
        forged = json.loads(entry.value or b"{}")
        forged["manifest"]["product"]["price"] = price
        await kv.put(product_key(sku), json.dumps(forged).encode())
    finally:
        await client.close()


def test_a_tampered_catalogue_is_refused_at_the_site(secure: Secure) -> None:
    product = {"sku": "SEC-1", "name": "Secure soap", "price": 3.5}
    with httpx.Client(verify=secure.pki.client_context(), timeout=10) as http:
        http.put(f"{secure.core_ports.https_url}/v1/catalogue/products", json=[product],
                 headers={"Authorization": f"Bearer {ADMIN}"}).raise_for_status()
        wait_until(lambda: _replica(secure).get("SEC-1") == 3.5, 30, "the signed catalogue at the site",
                   every=0.2)
        metrics = lambda: http.get(f"{secure.edge_ports.https_url}/metrics").text
        before = metric(metrics(), "e2c_catalogue_refused_total")
        asyncio.run(_tamper(secure, "SEC-1", 0.01))
        wait_until(lambda: metric(metrics(), "e2c_catalogue_refused_total") > before, 30,
                   "the site's refusal", every=0.2)
    assert _replica(secure)["SEC-1"] == 3.5  # the forged price never reached the replica



def test_a_site_over_its_rate_gets_429_at_the_core_and_other_sites_do_not(secure: Secure) -> None:
    cert, token = secure.pki.site(OTHER), TOKENS[OTHER]
    sha = "0" * 64
    with httpx.Client(verify=secure.pki.client_context(cert), timeout=30) as http:
        put = lambda: http.put(f"{secure.core_ports.https_url}/v1/images/{sha}", content=b"x",
                               headers={"Authorization": f"Bearer {token}"})
        statuses = [put().status_code for _ in range(SITE_RATE["burst_messages"])]
        assert 429 not in statuses
        refused = put()
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    with httpx.Client(verify=secure.pki.client_context(secure.pki.site(SITE)), timeout=30) as http:
        other = http.put(f"{secure.core_ports.https_url}/v1/images/{sha}", content=b"x",
                         headers={"Authorization": f"Bearer {TOKENS[SITE]}"})
    assert other.status_code != 429


# --------------------------------------------------------------------------- changes on disk (last)


def _served_serial(port: int, ca: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def _get(conn: http.client.HTTPSConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def test_a_certificate_renewed_on_disk_is_served_without_dropping_open_connections(secure: Secure) -> None:
    ca = secure.pki.ca_file
    port = secure.core_ports.http
    before = _served_serial(port, ca)
    ctx = ssl.create_default_context(cafile=ca)
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        assert _get(kept, "/healthz") == 200
        sock = kept.sock
        renewed = secure.pki.ca.renew("core", "core")
        wait_until(lambda: _served_serial(port, ca) == renewed.serial, 20, "the renewed certificate",
                   every=0.2)
        assert renewed.serial != before
        assert _get(kept, "/healthz") == 200
        assert kept.sock is sock  # the same TLS connection, still open, on the old certificate
    finally:
        kept.close()
    metrics = httpx.get(f"{secure.core_ports.https_url}/metrics", verify=ctx, timeout=5).text
    days = [float(v) / 86400 for v in re.findall(r'e2c_tls_cert_expiry_seconds\{cert="core"\} (\S+)', metrics)]
    assert days and 390 < days[0] < 398
    assert read_cert(secure.pki.ca.paths("core", "core")[0]).serial_number == renewed.serial


def test_a_site_revoked_while_running_is_refused_without_a_restart(secure: Secure) -> None:
    path, cert, token = "/v1/catalogue/products", secure.pki.site(OTHER), TOKENS[OTHER]
    assert secure.core_get(path, cert=cert, token=token).status_code == 200
    secure.pki.ca.revoke("site", OTHER)

    def refused() -> bool:
        try:
            secure.core_get(path, cert=cert, token=token)
        except httpx.TransportError:
            return True
        return False

    wait_until(refused, 20, "the revocation to apply", every=0.2)
    # The other site's certificate is unaffected.
    assert secure.core_get(path, cert=secure.pki.site(SITE), token=TOKENS[SITE]).status_code == 200

