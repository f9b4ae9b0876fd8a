"""Nothing acknowledged is ever lost: a gateway killed mid-burst, a core down for the whole run.

Real processes (`edge2core edge up`, `edge2core core up`), real broker, real kiosk clients.
"""

from __future__ import annotations

import hashlib
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest

from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.edge.faces import FaceRedactor, load_default_detector
from edge2core.edge.mqtt_door import MqttEndpoint
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.roles import CorePorts, EdgePorts, start_core, start_edge
from edge2core.sim.devices import Kiosk
from edge2core.sim.photos import LabelledPhoto, SyntheticCatalogue
from tests.support import waiting

SITE = "store-r"


wait_until = partial(waiting.wait_until, every=0.2)


def photos(n: int) -> list[LabelledPhoto]:
    source = SyntheticCatalogue(4, seed=3)
    per = -(-n // 4)
    return [p for product in source.products() for p in source.photos("train", product, per)][:n]


def expected_sha(photo: LabelledPhoto, redactor: FaceRedactor) -> str:
    return prepare(photo.data, PreparePolicy(), redactor).sha256


def core_objects(core_dir: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (core_dir / "objects" / "images").glob("*/*.jpg")}


def kiosk_endpoint(edge_dir: Path, port: int) -> MqttEndpoint:
    registry = DeviceRegistry(edge_dir / "devices.json")
    token = registry.add("kiosk-1", DeviceRole.KIOSK)
    return MqttEndpoint("127.0.0.1", port, "tcp", "kiosk-1", token)


@pytest.fixture(scope="module")
def redactor() -> FaceRedactor:
    return FaceRedactor(load_default_detector())


def test_core_down_for_the_whole_burst_then_everything_arrives_once(
    tmp_path: Path, redactor: FaceRedactor
) -> None:
    core_ports, edge_ports = CorePorts(), EdgePorts()
    endpoint = kiosk_endpoint(tmp_path / "edge", edge_ports.mqtt)
    edge, _ = start_edge(SITE, tmp_path / "edge", core_ports, edge_ports)
    core = None
    try:
        edge.wait_healthy()
        batch = photos(24)
        kiosk = Kiosk(endpoint, SITE, "kiosk-1")
        acked: list[LabelledPhoto] = []
        kiosk.send(batch, acked.append)
        kiosk.close()
        assert len(acked) == len(batch)

        status = lambda: httpx.get(f"{edge_ports.url}/v1/status").json()["spool"]
        wait_until(lambda: status()["items"] == len(batch), 60, "everything spooled")
        backlog = status()
        assert backlog["bytes"] > 0 and backlog["oldest_age_s"] is not None

        core, _ = start_core(tmp_path / "core", core_ports)
        core.wait_healthy()
        wait_until(lambda: status()["items"] == 0, 90, "the spool to drain")
        stored = core_objects(tmp_path / "core")
        assert len(stored) == len(batch)  # exactly once: nothing twice, nothing missing
        for photo in acked:
            sha = expected_sha(photo, redactor)
            assert hashlib.sha256(stored[sha]).hexdigest() == sha
        stats = httpx.get(f"{core_ports.url}/v1/stats").json()
        assert stats["by_source"]["kiosk"] == len(batch)
    finally:
        edge.stop()
        if core is not None:
            core.stop()


def test_gateway_killed_mid_burst_loses_no_acknowledged_photo(
    tmp_path: Path, redactor: FaceRedactor
) -> None:
    core, core_ports = start_core(tmp_path / "core")
    edge_ports = EdgePorts()
    endpoint = kiosk_endpoint(tmp_path / "edge", edge_ports.mqtt)
    edge, _ = start_edge(SITE, tmp_path / "edge", core_ports, edge_ports)
    try:
        core.wait_healthy()
        edge.wait_healthy()
        batch = photos(60)
        acked: list[LabelledPhoto] = []
        kiosk = Kiosk(endpoint, SITE, "kiosk-1")
        sender = threading.Thread(target=kiosk.send, args=(batch, acked.append, 3.0), daemon=True)
        sender.start()
        wait_until(lambda: len(acked) >= 20, 60, "a third of the burst acknowledged")
        edge.kill()  # SIGKILL: no shutdown code runs (its broker dies with it)
        sender.join(timeout=240)
        kiosk.close()
        assert 20 <= len(acked) < len(batch) or len(acked) == len(batch)

        edge, _ = start_edge(SITE, tmp_path / "edge", core_ports, edge_ports)
        edge.wait_healthy()
        wanted = {expected_sha(p, redactor) for p in acked}
        wait_until(lambda: wanted <= core_objects(tmp_path / "core").keys(), 120,
                   f"all {len(wanted)} acknowledged photos at the core")
        stored = core_objects(tmp_path / "core")
        for sha in wanted:
            assert hashlib.sha256(stored[sha]).hexdigest() == sha
    finally:
        edge.stop()
        core.stop()
