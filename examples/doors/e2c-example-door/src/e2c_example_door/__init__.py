"""A minimal edge2core door plugin (docs/doors.md): photos over a line-based TCP protocol.

    -> "<device> <sku or -> <length>\\n" then <length> bytes of photo
    <- "OK <sha256>\\n" once the photo is durable in the spool, else "ERR <reason>\\n"

Everything a door needs comes from `DoorContext`: the site's settings, its own options
(`[edge.door_options.example]`) and the one gateway, which prepares, de-duplicates and spools.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any

from edge2core.common.events import CaptureMeta, Source
from edge2core.edge.doors.plugin import Door, DoorContext
from edge2core.edge.gateway import CAPTURE_ERRORS, error_reason
from edge2core.edge.spool import SpoolFull

MAX_BYTES = 16 * 1024 * 1024


class ExampleDoor:
    name = "example"

    def __init__(self, context: DoorContext, host: str, port: int) -> None:
        self._context = context
        door = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(door.receive(self.rfile).encode() + b"\n")

        self._server = socketserver.ThreadingTCPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def receive(self, stream: Any) -> str:
        """One photo from the device; the answer line."""
        try:
            device, sku, length = stream.readline(200).decode().split()
            if not 0 < int(length) <= MAX_BYTES:
                return "ERR too_large"
            meta = CaptureMeta(site=self._context.settings.site, device=device, source=Source.KIOSK,
                               sku=None if sku == "-" else sku)
            receipt = self._context.gateway.capture(stream.read(int(length)), meta, door=self.name)
        except SpoolFull:
            return "ERR spool_full"  # nothing kept: the device sends it again later
        except CAPTURE_ERRORS as exc:
            return f"ERR {error_reason(exc)}"
        except ValueError:
            return "ERR malformed"
        return f"OK {receipt.sha256}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "state": "up" if self._thread.is_alive() else "stopped",
                "port": self.port}


def make_doors(context: DoorContext) -> list[Door]:
    options = context.options("example")
    if "port" not in options:
        return []  # not asked for at this site
    return [ExampleDoor(context, options.get("host", "127.0.0.1"), int(options["port"]))]
