"""The door interface: what a door plugin implements and what it is given.

A plugin is a callable registered in the entry-point group `edge2core.doors`:

    [project.entry-points."edge2core.doors"]
    mydoor = "my_package.door:make_doors"

`make_doors(context: DoorContext) -> Iterable[Door]` returns the doors to run for this site
(none when the site's settings do not ask for it). The site then calls `start()` on each, reads
`status()` for its status page, and calls `stop()` on shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edge2core.config import EdgeSettings
from edge2core.edge.broker_config import SiteAccess
from edge2core.edge.dead_letters import DeadLetters
from edge2core.edge.gateway import Gateway

ENTRY_POINT_GROUP = "edge2core.doors"

# Publishes an event (JSON bytes) under a subject suffix such as "camera.recognised"; the site
# sends it on its event stream. Must not block (called from door threads).
EventPublisher = Callable[[str, bytes], None]


def _no_events(_subject: str, _payload: bytes) -> None:
    pass


@runtime_checkable
class Door(Protocol):
    """One running door. Thread-based or not, its methods are called from the site's thread.

    - `name`: unique within the site, e.g. "amqp" or "rtsp:aisle-3".
    - `start()`: returns once the door serves (or, for a door whose far end may be down, once
      it is trying to reach it in the background); raises if it can never work (bad settings).
    - `stop()`: stops taking new input, finishes or abandons (never acknowledges) what is in
      flight, returns within seconds.
    - `status()`: a small JSON-able dict for the site's status page, at least
      `{"name": ..., "state": "up" | "connecting" | "down" | "stopped"}`.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DoorContext:
    """What a door gets: the site's settings, the one gateway, where dead letters go, the
    device access rules (broker doors), the site's status callable and HTTP app (the HTTP door
    serves them) and an event publisher. `options(name)` is the door's own table of settings,
    `[edge.door_options.<name>]` in the site's TOML file (or `E2C_EDGE_DOOR_OPTIONS` as JSON).
    """

    settings: EdgeSettings
    gateway: Gateway
    dead_letters: DeadLetters
    access: SiteAccess | None = None
    status: Callable[[], dict] = dict
    publish_event: EventPublisher = field(default=_no_events)
    # The site's HTTP app as `edge up` composed it (API plus pages) and uvicorn's TLS options;
    # without one the HTTP door builds the plain API.
    http_app: Any = None
    http_options: dict[str, Any] = field(default_factory=dict)

    def options(self, name: str) -> dict[str, Any]:
        return dict(self.settings.door_options.get(name, {}))


DoorFactory = Callable[[DoorContext], Iterable[Door]]


class DoorPluginError(RuntimeError):
    """A door plugin could not be loaded or started; the message names it."""
