"""The site's broker is reloaded only when what it loads changed: a reload closes every device
its auth callout admitted (nats-server 2.15.1), so TLS files that were only rewritten with the
same bytes or touched (a CRL refreshed, which nats-server does not read; the CA's index, which
only the auth callout reads) must not drop a connected device. Device certificates issued or
revoked do not reload it either (test_device_revocation.py); a real renewal of the site's own
certificate still does (test_tls_links.py renews it and checks it is served)."""

from __future__ import annotations

import os
import threading

import pytest

from edge2core.edge.mqtt_door import make_client
from tests.support.secure_site import Secure, endpoint
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_RELOADED = "nothing the broker loads changed"


def test_touched_tls_files_do_not_drop_connected_devices(secure: Secure) -> None:
    door = endpoint(secure, "kiosk-1")
    client = make_client(door, "kiosk-1-steady")
    connects, drops = threading.Semaphore(0), []
    client.on_connect = lambda *_a: connects.release()
    client.on_disconnect = lambda *a: drops.append(a)
    client.connect(door.host, door.port, keepalive=30)
    client.loop_start()
    try:
        assert connects.acquire(timeout=20), "the device connected"
        log = secure.edge.log_path
        before = log.read_text(errors="replace").count(NOT_RELOADED)
        folder = secure.pki.folder
        # The same bytes written again (a new mtime), and files only touched.
        crl = folder / "crl.pem"
        crl.write_bytes(crl.read_bytes())
        for path in (folder / "index.json", folder / "ca.pem", folder / "sites" / "site-a.pem"):
            os.utime(path)
        wait_until(lambda: log.read_text(errors="replace").count(NOT_RELOADED) > before, 30,
                   "the site noticing the files and not reloading its broker", every=0.2)
        assert drops == []
        assert client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()
