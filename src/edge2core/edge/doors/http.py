"""The HTTP door as a plugin: the site's FastAPI app (captures, recognition, status, metrics)
served by uvicorn on its own thread and event loop.

Its own loop, not the site's: the site's loop runs the forwarder and the model agent, and a
door is started and stopped like every other door, from a plain call.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from edge2core.common.logging import get_logger
from edge2core.edge.api import create_edge_app
from edge2core.edge.doors.plugin import Door, DoorContext

log = get_logger(__name__)


class HttpDoor:
    """Serves `app` on host:port; `start()` returns once the port accepts connections."""

    name = "http"

    def __init__(self, app: Any, host: str, port: int, start_timeout_s: float = 30.0,
                 **options: Any) -> None:
        # Stopping waits for requests in flight for a bounded time, not for every keep-alive
        # connection a device left open.
        options.setdefault("timeout_graceful_shutdown", 5)
        self._config = uvicorn.Config(app, host=host, port=port, log_config=None,
                                      access_log=False, **options)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._start_timeout_s = start_timeout_s
        tls = options.get("ssl_certfile") or options.get("ssl_context_factory")
        self.url = f"{'https' if tls else 'http'}://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="e2c-http-door", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP door could not listen on {self.url}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the HTTP door did not start on {self.url} "
                                   f"within {self._start_timeout_s}s")
            time.sleep(0.02)
        log.info("HTTP door up", url=self.url)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    def status(self) -> dict[str, Any]:
        alive = self._thread is not None and self._thread.is_alive()
        return {"name": self.name, "state": "up" if alive and self._server.started else "stopped",
                "url": self.url}


def make_doors(context: DoorContext) -> list[Door]:
    """Entry point `http`: the site's HTTP app (or, without one in the context, the plain API)
    on `settings.host:settings.http_port`."""
    settings = context.settings
    app = context.http_app
    if app is None:
        app = create_edge_app(
            context.gateway, settings.site, context.status, settings.max_bytes,
            devices=context.access.devices if context.access is not None else None,
        )
    return [HttpDoor(app, settings.host, settings.http_port, **context.http_options)]
