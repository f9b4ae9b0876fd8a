"""Doors as plugins: the built-in doors come through the `edge2core.doors` entry points, an
example door installed as a separate package (into a temporary venv) is found, started and
feeds the gateway, and the registry's rules hold (unknown doors, failed starts, status)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import threading
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from edge2core.common.nats_server import EmbeddedNats, NatsServerConfig
from edge2core.common.net import free_port
from edge2core.config import EdgeSettings
from edge2core.edge.doors.plugin import ENTRY_POINT_GROUP, Door, DoorContext, DoorPluginError
from edge2core.edge.doors.registry import SiteDoors, discover
from edge2core.edge.service import event_publisher
from edge2core.sim.synthetic import render_photo
from tests.support import waiting
from tests.support.door_site import REPO, open_site, site_process

EXAMPLE = REPO / "examples" / "doors" / "e2c-example-door"


def test_the_built_in_doors_are_entry_points() -> None:
    found = discover()
    assert {"mqtt", "http", "amqp", "folder", "rtsp"} <= set(found)
    assert found["amqp"].value == "edge2core.edge.doors.amqp:make_doors"
    assert "example" not in found  # installed only into the temporary venv below


def send(port: int, header: str, photo: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{header} {len(photo)}\n".encode() + photo)
        return sock.makefile().readline().strip()


def spool_shas(spool_dir: Path) -> set[str]:
    if not (spool_dir / "index.db").exists():
        return set()
    db = sqlite3.connect(f"file:{spool_dir / 'index.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT sha256 FROM items")}
    finally:
        db.close()


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this project's packages (but not its own entry points' changes)
    and has the example door installed into it the way a team would: `pip install`."""
    venv = tmp_path_factory.mktemp("plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    ours = sysconfig.get_path("purelib")
    # addsitedir, not a plain path line: our own .pth files (edge2core's editable install) run too.
    (site_packages / "_e2c_project.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = shutil.copytree(EXAMPLE, venv.parent / "e2c-example-door",
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                   check=True, timeout=300)
    return venv / "bin" / "python"


@pytest.mark.integration
def test_an_example_door_from_its_own_package_is_found_started_and_feeds_the_gateway(
    tmp_path: Path, plugin_venv: Path
) -> None:
    listed = subprocess.run(
        [str(plugin_venv), "-c", "from edge2core.edge.doors.registry import discover; "
                                 "print(sorted(discover()))"],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "'example'" in listed.stdout and "'mqtt'" in listed.stdout
    port = free_port()
    settings = EdgeSettings(site="site-plugin", data_dir=tmp_path / "site", doors=["example"],
                            door_options={"example": {"port": port}})
    with site_process(settings.model_dump(mode="json"), python=str(plugin_venv)):
        waiting.wait_until(lambda: _port_open(port), 30, "the example door's port")
        answer = send(port, "kiosk-7 SKU-0003", render_photo(3, 1))
        assert answer.startswith("OK ")
        assert send(port, "kiosk-7 SKU-0003", b"\xff\xd8\xff broken") == "ERR corrupt"
        assert send(port, "kiosk-7 -", render_photo(3, 2)) == "ERR malformed"  # kiosk without sku
        assert spool_shas(settings.data_dir / "spool") == {answer.split()[1]}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- the registry's rules, with test entry points --------------------------------------------

class Recorder:
    """A door that records what the site did to it; `fail` makes its start raise."""

    log: list[str] = []

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self._fail = name, fail

    def start(self) -> None:
        if self._fail:
            raise OSError("port taken")
        Recorder.log.append(f"start {self.name}")

    def stop(self) -> None:
        Recorder.log.append(f"stop {self.name}")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "state": "up"}


def good_doors(context: DoorContext) -> list[Door]:
    return [Recorder("good-1"), Recorder("good-2")]


def bad_doors(context: DoorContext) -> list[Door]:
    return [Recorder("bad", fail=True)]


def not_a_door(context: DoorContext) -> list[object]:
    return [object()]


def entry(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{attr}", group=ENTRY_POINT_GROUP)


def sited(tmp_path: Path, doors: list[str] | None, **plugins: str) -> SiteDoors:
    site = open_site(EdgeSettings(site="site-reg", data_dir=tmp_path, doors=[]))
    site.close()
    context = DoorContext(site.settings.model_copy(update={"doors": doors}), site.gateway,
                          site.dead_letters)
    return SiteDoors(context, {name: entry(name, attr) for name, attr in plugins.items()})


def test_doors_start_in_order_report_status_and_stop_in_reverse(tmp_path: Path) -> None:
    Recorder.log.clear()
    doors = sited(tmp_path, None, good="good_doors")
    assert [d.name for d in doors.start()] == ["good-1", "good-2"]
    assert doors.status() == [{"name": "good-1", "state": "up"}, {"name": "good-2", "state": "up"}]
    doors.stop()
    assert Recorder.log == ["start good-1", "start good-2", "stop good-2", "stop good-1"]


def test_a_door_that_fails_to_start_stops_the_site_start_and_the_others(tmp_path: Path) -> None:
    Recorder.log.clear()
    doors = sited(tmp_path, ["good", "zbad"], good="good_doors", zbad="bad_doors")
    with pytest.raises(OSError, match="port taken"):
        doors.start()
    assert Recorder.log == ["start good-1", "start good-2", "stop good-2", "stop good-1"]


def test_unknown_or_broken_plugins_are_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(DoorPluginError, match=r"\['nope'\].*not installed"):
        sited(tmp_path, ["nope"], good="good_doors").start()
    with pytest.raises(DoorPluginError, match="not a Door"):
        sited(tmp_path, None, odd="not_a_door").start()
    with pytest.raises(DoorPluginError, match="does not load"):
        sited(tmp_path, None, gone="no_such_attribute").start()


@pytest.mark.integration
async def test_door_events_reach_the_sites_event_subjects_from_any_thread(tmp_path: Path) -> None:
    cfg = NatsServerConfig.with_free_ports("doors-events", tmp_path / "js", mqtt=False, websocket=False)
    with EmbeddedNats(cfg, tmp_path / "run") as server:
        client = await nats.connect(server.client_url)
        got: list[tuple[str, bytes]] = []

        async def on_msg(msg: Msg) -> None:
            got.append((msg.subject, msg.data))

        await client.subscribe("e2c.events.site-ev.>", cb=on_msg)
        await client.flush()
        publish = event_publisher(client, "site-ev")
        thread = threading.Thread(target=publish, args=("camera.recognised", b'{"sku": "SKU-0001"}'))
        thread.start()
        thread.join(10)
        await waiting.until(lambda: got, "the event")
        await client.drain()
    assert got == [("e2c.events.site-ev.camera.recognised", b'{"sku": "SKU-0001"}')]
