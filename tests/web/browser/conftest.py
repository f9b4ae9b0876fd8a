"""The web pages in a real browser: one core and one edge site (real processes, as the demo
starts them) that trained a first model on grocery photos, and one headless Chromium from
Debian's `chromium` package driven by Playwright (never a downloaded browser).

Everything here is marked `browser` (and `integration`: real servers). The fixtures are
package-scoped: Playwright's sync API holds an event loop while it runs, so it is closed before
any async test outside this folder runs. Screenshots of every
page at desktop and phone sizes land in `test-artifacts/web/` for people to look at.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.roles import CorePorts, EdgePorts, RoleProcess, start_core, start_edge
from edge2core.web.auth.users import Role, UserStore
from tests.support.grocery import DATASET, photos_of
from tests.support.paths import REPO
from tests.support.waiting import wait_until

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("E2C_TEST_ARTIFACTS") or REPO / "test-artifacts") / "web"
SITE = "store-web"
# (fine class id in the grocery dataset, SKU, name, price): what the model learns. Two close
# apples make it honestly unsure about some apple photos, which fill the labelling queue.
PRODUCTS = ((6, "BANANA-1", "Banana", 1.29), (29, "BRAVO-OJ", "Bravo Orange Juice", 2.49),
            (2, "APPLE-PL", "Pink Lady apple", 0.45), (4, "APPLE-RG", "Royal Gala apple", 0.39))
# Shoppers' photos of apples: those two (held out) and Red Delicious, never seen.
OTHER_PHOTOS = ((2, "val", 3), (4, "val", 3), (3, "train", 4))
PASSWORDS = {"ada": "admin-pass-1", "lena": "labeller-pass-1"}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 780}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


def needs_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run scripts/install-system-deps.sh")
    if not (DATASET / "train.txt").is_file():
        pytest.skip(f"grocery dataset not found at {DATASET}")


def shrink(data: bytes, side: int = 448) -> bytes:
    """A grocery photo at phone-upload size (faster through the edge's preparation)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Stack:
    core: RoleProcess
    core_ports: CorePorts
    edge: RoleProcess
    edge_ports: EdgePorts
    work: Path
    kiosk_token: str
    shopper_token: str
    held_out: dict[str, list[bytes]] = field(default_factory=dict)
    other: list[bytes] = field(default_factory=list)
    unsure: list[bytes] = field(default_factory=list)  # of `other`, those the model was unsure of

    @property
    def dashboard(self) -> str:
        return f"{self.core_ports.url}/dashboard"

    @property
    def shop(self) -> str:
        return f"{self.edge_ports.url}/shop"

    def core_api(self) -> httpx.Client:
        return httpx.Client(base_url=self.core_ports.url, timeout=30)

    def edge_api(self) -> httpx.Client:
        return httpx.Client(base_url=self.edge_ports.url, timeout=30)

    def photo_file(self, name: str, data: bytes) -> Path:
        path = self.work / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def _send_kiosk_photos(edge: httpx.Client, token: str) -> int:
    sent = 0
    for fine, sku, _name, _price in PRODUCTS:
        for data in photos_of(fine, "train", 10):
            answer = edge.post("/v1/photos", params={"sku": sku, "source": "kiosk"},
                               content=shrink(data), headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code in (200, 201), answer.text
            sent += answer.status_code == 201
    return sent


def _ask(edge: httpx.Client, token: str, photos: list[bytes]) -> list[tuple[float, bool, bytes]]:
    """Shoppers' questions over HTTP: (confidence, recognised, photo) each."""
    out = []
    for i, data in enumerate(photos):
        answer = edge.post("/v1/recognize", params={"request_id": f"other-{i}"}, content=data,
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        out.append((answer.json()["confidence"], answer.json()["recognised"], data))
    return out


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Core + edge with a first model trained by the core's own loop on four grocery products
    (40 kiosk photos), live at the edge; shoppers' apple photos asked about, so the labelling
    queue has work."""
    needs_browser()
    work = tmp_path_factory.mktemp("web")
    users = UserStore(work / "core" / "users.json")
    users.add("ada", Role.ADMIN, PASSWORDS["ada"])
    users.add("lena", Role.LABELLER, PASSWORDS["lena"])
    registry = DeviceRegistry(work / "edge" / "devices.json")
    kiosk = registry.add("staff-1", DeviceRole.KIOSK)
    shopper = registry.add("tester-phone", DeviceRole.SHOPPER)
    core, core_ports = start_core(work / "core", extra_env={
        "E2C_CORE_AUTOMATION": '{"bootstrap_quiet_s": 1, "min_photos_per_class": 4}'})
    edge = None
    try:
        core.wait_healthy(90)
        edge, edge_ports = start_edge(SITE, work / "edge", core_ports, extra_env={
            "E2C_EDGE_UNRECOGNISED_BELOW": "0.9", "E2C_EDGE_FORWARD_CONCURRENCY": "4"})
        edge.wait_healthy(90)
        with httpx.Client(base_url=core_ports.url, timeout=60) as api:
            api.put("/v1/products", json=[{"sku": sku, "name": name, "price": price}
                                          for _f, sku, name, price in PRODUCTS]).raise_for_status()
        stack = Stack(core, core_ports, edge, edge_ports, work, kiosk, shopper)
        with stack.edge_api() as edge_http, stack.core_api() as api:
            acked = _send_kiosk_photos(edge_http, kiosk)
            wait_until(lambda: api.get("/v1/stats").json()["by_source"].get("kiosk", 0) >= acked,
                  timeout=120, what="every kiosk photo at the core", every=0.5)
            wait_until(lambda: edge_http.get("/v1/status").json()["model_version"] == 1,
                  timeout=300, what="model v1 trained by the loop and live at the edge", every=0.5)
            for fine, sku, _n, _p in PRODUCTS:
                stack.held_out[sku] = [shrink(d) for d in photos_of(fine, "val", 4)]
            stack.other = [shrink(d) for fine, split, n in OTHER_PHOTOS
                           for d in photos_of(fine, split, n)]
            answers = _ask(edge_http, shopper, stack.other)
            stack.unsure = [data for confidence, recognised, data in sorted(answers, key=lambda a: a[0])
                            if not recognised]  # the least sure first
            unsure = len(stack.unsure)
            assert unsure, f"no photo of an unknown product was unsure: {[a[:2] for a in answers]}"
            wait_until(lambda: api.get("/v1/labelling/tasks").json()["total"] >= unsure,
                  timeout=120, what="the unsure photos in the core's labelling queue", every=0.5)
        yield stack
    finally:
        if edge is not None:
            edge.stop()
        core.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def artifacts() -> Path:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


def sign_in(browser: object, stack: Stack, name: str, viewport: dict | None = None):  # type: ignore[no-untyped-def]
    """A new browser context signed in as `name`; returns (context, page)."""
    context = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(stack.dashboard + "/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORDS[name])
    page.click("button[type=submit]")
    page.wait_for_url(stack.dashboard)
    return context, page


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
