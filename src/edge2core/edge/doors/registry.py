"""Finding door plugins (entry-point group `edge2core.doors`) and running the site's doors.

`discover()` maps each installed door name to its factory. `SiteDoors` starts the doors the
site's settings enable (`EdgeSettings.doors`; None means every installed one), stops them in
reverse order, and reports their status. A door that fails to start stops the site's start:
half a site that looks healthy is worse than a clear error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from edge2core.common.logging import get_logger
from edge2core.edge.doors.plugin import (
    ENTRY_POINT_GROUP,
    Door,
    DoorContext,
    DoorFactory,
    DoorPluginError,
)

log = get_logger(__name__)

# Started in this order (brokers' doors before the HTTP door answers health checks); plugins
# after, by name.
BUILTIN_ORDER = ("mqtt", "amqp", "folder", "rtsp", "http")


def discover(group: str = ENTRY_POINT_GROUP) -> dict[str, EntryPoint]:
    """Installed door plugins by name (not loaded yet). Two packages claiming one name: the
    later one wins, with a warning (which one is undefined, so rename one)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            log.warning("two door plugins share a name", name=ep.name,
                        first=found[ep.name].value, second=ep.value)
        found[ep.name] = ep
    return found


def load(ep: EntryPoint) -> DoorFactory:
    """Raises `DoorPluginError` when the plugin's module does not import or is not callable."""
    try:
        factory = ep.load()
    except Exception as exc:
        raise DoorPluginError(f"door plugin {ep.name!r} ({ep.value}) does not load: {exc!r}") from exc
    if not callable(factory):
        raise DoorPluginError(f"door plugin {ep.name!r} ({ep.value}) is not callable")
    return factory  # type: ignore[no-any-return,unused-ignore]


def _ordered(names: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, rank["http"] - 0.5), n))


class SiteDoors:
    """The doors of one site, made and started through their plugins."""

    def __init__(self, context: DoorContext, plugins: dict[str, EntryPoint] | None = None) -> None:
        self._context = context
        self._plugins = discover() if plugins is None else plugins
        self._doors: list[Door] = []
        self._lock = threading.Lock()

    def enabled(self) -> list[str]:
        """The plugin names to run; raises `DoorPluginError` for a named one not installed."""
        wanted = self._context.settings.doors
        if wanted is None:
            return _ordered(self._plugins)
        missing = sorted(set(wanted) - set(self._plugins))
        if missing:
            raise DoorPluginError(
                f"doors {missing} are enabled in the settings but not installed (installed: "
                f"{sorted(self._plugins)}); install their package or remove them from 'doors'")
        return _ordered(wanted)

    def start(self) -> list[Door]:
        """Make and start every enabled door; on any failure stop the started ones and raise
        `DoorPluginError`."""
        try:
            for name in self.enabled():
                for door in self._make(name):
                    door.start()
                    with self._lock:
                        self._doors.append(door)
                    log.info("door started", plugin=name, door=door.name)
        except BaseException:
            self.stop()
            raise
        return list(self._doors)

    def _make(self, name: str) -> list[Door]:
        factory = load(self._plugins[name])
        try:
            doors = list(factory(self._context))
        except DoorPluginError:
            raise
        except Exception as exc:
            raise DoorPluginError(f"door plugin {name!r} failed to make its doors: {exc!r}") from exc
        for door in doors:
            if not isinstance(door, Door):
                raise DoorPluginError(f"door plugin {name!r} returned {door!r}, not a Door")
        return doors

    def stop(self) -> None:
        """Stop every started door, last started first; one door failing to stop never keeps
        the others running."""
        with self._lock:
            doors, self._doors = self._doors[::-1], []
        for door in doors:
            try:
                door.stop()
            except Exception:
                log.exception("door did not stop cleanly", door=door.name)

    def running(self) -> list[Door]:
        """The doors started, in start order."""
        with self._lock:
            return list(self._doors)

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            doors = list(self._doors)
        out = []
        for door in doors:
            try:
                out.append(door.status())
            except Exception as exc:
                out.append({"name": door.name, "state": "unknown", "error": repr(exc)[:200]})
        return out
