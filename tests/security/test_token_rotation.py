"""Rotating a site's token without downtime, with a real core and a real site (`core up`,
`edge up` as processes, TLS on every link): the core is given the site's old and new token
together ("OLD,NEW"), the site switches to the new one, the core drops the old one. Photos
sent to the site in every phase reach the core, none is refused, and the leaf link comes back
by itself after every restart. The core restarts here, so this file has its own core and site
(not the package's `secure` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from edge2core.common.events import SiteModelReport, site_report_subject
from edge2core.common.site_tokens import leaf_user
from edge2core.core.api.access import site_token_ok, token_site
from edge2core.core.deliver.site_reports import report_trusted
from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.roles import CorePorts, EdgePorts, RoleProcess, start_core, start_edge
from edge2core.sim.photos import SyntheticCatalogue
from tests.support.secure_site import leafnodes, metric
from tests.support.tls import Pki, make_pki
from tests.support.waiting import wait_until

SITE = "site-r"
ADMIN = "admin-token-for-the-rotation-test"
OLD, NEW = "old-token-of-site-r-0123456789", "new-token-of-site-r-9876543210"


class Rotation:
    """One core and one site under `root`, restarted with other tokens on the same ports."""

    def __init__(self, root: Path, pki: Pki) -> None:
        self.root, self.pki = root, pki
        self.core_ports, self.edge_ports = CorePorts(), EdgePorts()
        self.secret = DeviceRegistry(root / "edge" / "devices.json").add("kiosk-r", DeviceRole.KIOSK)
        source = SyntheticCatalogue(2, seed=11)
        self.photos = iter([p.data for p in source.photos("train", source.products()[0], 8)])
        self.core: RoleProcess | None = None
        self.edge: RoleProcess | None = None

    def start_core(self, tokens: str) -> None:
        if self.core is not None:
            # A core takes up to its 20 s stop timeout to exit on SIGTERM today; a short one
            # (then SIGKILL) is a restart too, and keeps this test quick.
            self.core.stop(timeout=5)
        self.core, _ = start_core(self.root / "core", self.core_ports, tls=self.pki.folder, extra_env={
            "E2C_CORE_ADMIN_TOKEN": ADMIN, "E2C_CORE_SITE_TOKENS": json.dumps({SITE: tokens}),
            "E2C_CORE_AUTOMATION": json.dumps({"enabled": False})})
        self.core.wait_healthy()

    def start_edge(self, token: str) -> None:
        if self.edge is not None:
            self.edge.stop()
        self.edge, _ = start_edge(SITE, self.root / "edge", self.core_ports, self.edge_ports,
                                  tls=self.pki.folder, extra_env={"E2C_EDGE_TOKEN": token,
                                                                  "E2C_EDGE_BLUR_FACES": "false"})
        self.edge.wait_healthy()

    def stop(self) -> None:
        if self.edge is not None:
            self.edge.stop()
        if self.core is not None:
            self.core.stop(timeout=5)  # see start_core

    def core_get(self, path: str, token: str) -> int:
        with httpx.Client(verify=self.pki.client_context(self.pki.site(SITE)), timeout=10) as http:
            return http.get(f"{self.core_ports.https_url}{path}",
                            headers={"Authorization": f"Bearer {token}"}).status_code

    def at_core(self) -> int:
        with httpx.Client(verify=self.pki.client_context(), timeout=10) as http:
            stats = http.get(f"{self.core_ports.https_url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN}"})
            return int(stats.json()["by_source"].get("kiosk", 0))

    def send_and_see_it_arrive(self, sent: int) -> None:
        """A new photo into the site's HTTPS door; it must reach the core (the `sent`th)."""
        with httpx.Client(verify=self.pki.client_context(), timeout=30) as http:
            answer = http.post(f"{self.edge_ports.https_url}/v1/photos?sku=SKU-1", content=next(self.photos),
                               headers={"Authorization": f"Bearer {self.secret}"})
        assert answer.status_code == 201, answer.text
        wait_until(lambda: self.at_core() >= sent, 90, f"photo {sent} at the core", every=0.3)

    def leaf_up(self, why: str) -> None:
        wait_until(lambda: leafnodes(self.core_ports) == 1, 60, f"the leaf link {why}", every=0.2)

    def quarantined(self) -> float:
        with httpx.Client(verify=self.pki.client_context(), timeout=10) as http:
            text = http.get(f"{self.edge_ports.https_url}/metrics").text
        return metric(text, "e2c_forward_quarantined_total")


def test_a_site_token_rotates_with_no_refused_upload_and_the_leaf_link_back_by_itself(tmp_path: Path) -> None:
    run = Rotation(tmp_path, make_pki(tmp_path / "ca", sites=(SITE,), devices=()))
    try:
        run.start_core(OLD)
        run.start_edge(OLD)
        run.leaf_up("with the old token")
        run.send_and_see_it_arrive(1)
        # 1. The core accepts both tokens (its restart: the site's uploads wait in its spool).
        run.start_core(f"{OLD},{NEW}")
        run.leaf_up("back after the core's restart, still on the old token")
        assert run.core_get("/v1/catalogue/products", OLD) == 200
        assert run.core_get("/v1/catalogue/products", NEW) == 200
        run.send_and_see_it_arrive(2)
        # 2. The site switches to the new token.
        run.start_edge(NEW)
        run.leaf_up("with the new token")
        run.send_and_see_it_arrive(3)
        # 3. The core drops the old token: the site, on the new one, carries on.
        run.start_core(NEW)
        run.leaf_up("back after the core dropped the old token")
        run.send_and_see_it_arrive(4)
        assert run.core_get("/v1/catalogue/products", OLD) == 401  # the old token is gone
        assert run.core_get("/v1/catalogue/products", NEW) == 200
        assert run.quarantined() == 0
        assert run.edge is not None
        log = run.edge.log_path.read_text(errors="replace")
        assert "core answered 401" not in log and "core answered 403" not in log
    finally:
        run.stop()


def test_a_site_with_a_token_the_core_does_not_list_gets_no_leaf_link(tmp_path: Path) -> None:
    """The control: the leaf link really logs in with the site's token (a wrong one is refused)."""
    run = Rotation(tmp_path, make_pki(tmp_path / "ca", sites=(SITE,), devices=()))
    try:
        run.start_core(OLD)
        run.start_edge(NEW)
        log = tmp_path / "core" / "nats" / "e2c-core.log"
        wait_until(lambda: "Authorization Violation" in log.read_text(errors="replace")
                   or "authentication error" in log.read_text(errors="replace"), 60,
                   "the core refusing the unknown token", every=0.2)
        assert leafnodes(run.core_ports) == 0
    finally:
        run.stop()


def test_during_a_rotation_both_tokens_speak_for_their_site_and_no_other() -> None:
    tokens = {SITE: f"{OLD},{NEW}", "site-q": "token-of-site-q-0123456789"}
    for token in (OLD, NEW):
        assert site_token_ok(tokens, SITE, f"Bearer {token}")
        assert token_site(tokens, f"Bearer {token}") == SITE
        assert not site_token_ok(tokens, "site-q", f"Bearer {token}")  # not another site's
        report = SiteModelReport(site=SITE, version=1, sha256="0" * 64, state="live").signed(token)
        assert report_trusted(report, site_report_subject(SITE), tokens)
    assert not site_token_ok(tokens, SITE, f"Bearer {OLD},{NEW}")  # the value itself is no token
    assert not site_token_ok(tokens, SITE, "Bearer another-token-0123456789")
    forged = SiteModelReport(site=SITE, version=1, sha256="0" * 64, state="live").signed("guess")
    assert not report_trusted(forged, site_report_subject(SITE), tokens)
    assert leaf_user(SITE, OLD) != leaf_user(SITE, NEW) and leaf_user(SITE, OLD).startswith(f"{SITE}.")
