"""A site reduced to what the doors need: spool, intake, gateway and the doors started through
their plugins (`SiteDoors`), in this process or in a child process a test can kill.

No broker, forwarder or model agent; no face detector (the doors, not privacy, are under test:
tests/edge/test_privacy.py covers that step).

    python -m tests.support.door_site SETTINGS_JSON READY_FILE  # writes READY_FILE once the doors run
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge2core.config import EdgeSettings
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.doors.plugin import DoorContext
from edge2core.edge.doors.registry import SiteDoors
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.spool import Spool
from tests.support import waiting

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DoorSite:
    settings: EdgeSettings
    spool: Spool
    gateway: Gateway
    dead_letters: DeadLetters
    doors: SiteDoors
    catalogue: CatalogueReplica

    def close(self) -> None:
        self.doors.stop()
        self.gateway.close()
        self.spool.close()


def open_site(settings: EdgeSettings, events: list[tuple[str, bytes]] | None = None) -> DoorSite:
    """Build the site's parts and start its enabled doors (as `edge up` does)."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    spool = Spool(data / "spool", settings.spool_budget_bytes)
    catalogue = CatalogueReplica(data / "catalogue.json")
    gateway = Gateway(Intake(settings.site, PreparePolicy(), spool), Recognizer(catalogue))
    dead_letters = DeadLetters(data / "dead-letters")
    lock = threading.Lock()

    def publish(subject: str, payload: bytes) -> None:
        if events is not None:
            with lock:
                events.append((subject, payload))

    context = DoorContext(settings, gateway, dead_letters, publish_event=publish)
    doors = SiteDoors(context)
    try:
        doors.start()
    except BaseException:
        gateway.close()
        spool.close()
        raise
    return DoorSite(settings, spool, gateway, dead_letters, doors, catalogue)


@contextmanager
def site_process(settings: dict[str, Any], timeout: float = 60.0,
                 python: str = sys.executable) -> Iterator[subprocess.Popen[str]]:
    """The site in a child process run by `python` (killed with SIGKILL on exit unless it
    already ended)."""
    ready = Path(settings["data_dir"]).parent / f"ready-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [python, "-m", "tests.support.door_site", json.dumps(settings), str(ready)],
        cwd=REPO, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        waiting.wait_until(lambda: ready.exists() or proc.poll() is not None, timeout,
                           "the site process to start")
        assert ready.exists(), f"the site process ended with {proc.returncode} before it was ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout)


def main() -> None:
    settings = EdgeSettings.model_validate(json.loads(sys.argv[1]))
    site = open_site(settings)
    Path(sys.argv[2]).write_text("READY")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    try:
        stop.wait()
    finally:
        site.close()


if __name__ == "__main__":
    main()
