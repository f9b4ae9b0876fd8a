"""The watched-folder door: cameras and scanners that drop files into a folder (an FTP or SMB
share) instead of speaking a protocol.

A file that has stopped growing (same size and modification time over `settle_s`) is read and
passed through the gateway. Only once the gateway returned (the photo is fsync'd in the spool,
or was already there) is it moved to `done/`; a refusal moves it to `refused/<reason>/` with a
`.reason.json` note beside it. Nothing is deleted: a photo leaves the folder only by a move,
after it is durable elsewhere. A full spool leaves the file where it is, tried again later.
A crash between the spool and the move re-reads the file on restart: the spool knows its bytes
(content addressing), so it is not kept twice.

Paths say the label: `<folder>/<sku>/photo.jpg` is a labelled capture (source kiosk),
`<folder>/photo.jpg` an unlabelled photo (source camera). Hidden files and `*.part`, `*.tmp`,
`*.partial` (uploads in progress) are left alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.fsutil import write_atomic
from edge2core.common.identifiers import IdKind, check, check_optional
from edge2core.common.logging import get_logger
from edge2core.common.metrics import PHOTOS_REJECTED
from edge2core.config import WatchedFolder
from edge2core.edge.doors.plugin import Door, DoorContext
from edge2core.edge.gateway import CAPTURE_ERRORS, Gateway, error_reason
from edge2core.edge.spool import SpoolFull

log = get_logger(__name__)

DOOR = "folder"
DONE, REFUSED = "done", "refused"
IN_PROGRESS = (".part", ".tmp", ".partial", ".crdownload", ".filepart")


@dataclass(frozen=True)
class Seen:
    size: int
    mtime_ns: int
    first_seen: float


class FolderDoor:
    """Watches one folder (see module doc); `workers` files are prepared at once."""

    def __init__(self, folder: WatchedFolder, site: str, gateway: Gateway, *, workers: int = 2,
                 attempts: int = 3, spool_full_pause_s: float = 5.0) -> None:
        self.root = folder.path
        self.name = f"folder:{folder.device}"
        self._folder = folder
        self._site = site
        self._gateway = gateway
        self._attempts = max(1, attempts)
        self._spool_full_pause_s = spool_full_pause_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="e2c-folder")
        self._seen: dict[Path, Seen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = {"done": 0, "refused": 0, "waiting": 0}
        self._counts_lock = threading.Lock()  # bumped from the worker threads
        self._last_error: str | None = None

    # --- the Door interface -----------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"e2c-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._pool.shutdown(wait=True)

    def status(self) -> dict[str, Any]:
        alive = self._thread is not None and self._thread.is_alive()
        with self._counts_lock:
            counts = dict(self._counts)
        return {"name": self.name, "state": "up" if alive else "stopped", "path": str(self.root),
                **counts, "last_error": self._last_error}

    # --- scanning ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self.scan()
                self._counts["waiting"] = len(self._seen)
                if ready and not self._process(ready):
                    self._stop.wait(self._spool_full_pause_s)  # full: give the forwarder time
                    continue
            except Exception as exc:  # an unreadable share: keep watching, say so
                self._last_error = repr(exc)[:300]
                log.warning("watched folder scan failed", folder=str(self.root), error=self._last_error)
            self._stop.wait(self._folder.poll_s)

    def scan(self, now: float | None = None) -> list[Path]:
        """Files unchanged for `settle_s`, oldest first; remembers the others."""
        now = time.time() if now is None else now
        current: dict[Path, Seen] = {}
        ready: list[tuple[int, Path]] = []
        for path, stat in self._files():
            before = self._seen.get(path)
            same = before is not None and (before.size, before.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            seen = before if same and before is not None else Seen(stat.st_size, stat.st_mtime_ns, now)
            if same and now - seen.first_seen >= self._folder.settle_s and stat.st_size > 0:
                ready.append((stat.st_mtime_ns, path))
            else:
                current[path] = seen
        self._seen = current
        return [path for _mtime, path in sorted(ready)]

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        out: list[tuple[Path, os.stat_result]] = []
        stack = [self.root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or entry.name.endswith(IN_PROGRESS):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if folder != self.root or entry.name not in (DONE, REFUSED):
                            stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        out.append((Path(entry.path), entry.stat(follow_symlinks=False)))
        return out

    # --- one file ---------------------------------------------------------------------------

    def _process(self, paths: list[Path]) -> bool:
        """False when the spool was full (the rest wait for the next scan)."""
        full = False
        for path, outcome in zip(paths, self._pool.map(self._take, paths), strict=True):
            if outcome == "spool_full":
                full = True
                self._seen.pop(path, None)  # looked at again on a later scan
        return not full

    def _take(self, path: Path) -> str:
        """Spool one file and move it; returns "done", "refused" or "spool_full"."""
        if self._stop.is_set():
            return "spool_full"  # stopping: left where it is for the next start
        rel = path.relative_to(self.root)
        for attempt in range(1, self._attempts + 1):
            try:
                self._gateway.capture(path.read_bytes(), self._meta(path, rel), door=DOOR)
            except CAPTURE_ERRORS as exc:
                return self._refuse(path, rel, error_reason(exc), str(exc))
            except SpoolFull:
                PHOTOS_REJECTED.labels(door=DOOR, reason="spool_full").inc()
                return "spool_full"
            except FileNotFoundError:
                return "gone"  # taken away by whoever put it there: nothing of ours to keep
            except Exception as exc:
                if attempt < self._attempts:
                    time.sleep(0.2 * attempt)
                    continue
                log.error("watched file failed every attempt; set aside", path=str(path), exc_info=exc)
                return self._refuse(path, rel, "internal_error", f"{type(exc).__name__}: {exc}")
            _move(path, _free(self.root / DONE / rel))
            self._bump("done")
            return "done"
        raise AssertionError("unreachable")

    def _bump(self, outcome: str) -> None:
        with self._counts_lock:
            self._counts[outcome] += 1

    def _meta(self, path: Path, rel: Path) -> CaptureMeta:
        sku = rel.parts[-2] if len(rel.parts) > 1 else None
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return CaptureMeta(
            site=self._site,
            device=check(IdKind.DEVICE, self._folder.device),
            source=Source.KIOSK if sku else Source.CAMERA,
            sku=check_optional(IdKind.SKU, sku),
            captured_at=mtime,
        )

    def _refuse(self, path: Path, rel: Path, reason: str, detail: str) -> str:
        PHOTOS_REJECTED.labels(door=DOOR, reason=reason).inc()
        dest = _free(self.root / REFUSED / reason / rel)
        _move(path, dest)
        note = {"reason": reason, "detail": detail[:1000], "path": str(rel), "at": time.time()}
        write_atomic(dest.with_name(dest.name + ".reason.json"), [json.dumps(note).encode()])
        self._bump("refused")
        log.info("watched file refused", path=str(rel), reason=reason)
        return "refused"


def _move(src: Path, dest: Path) -> None:
    """Rename without fsync: the photo is already durable in the spool, and a move lost in a
    crash only means the file is read again, found in the spool and moved then."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


def _free(dest: Path) -> Path:
    """`dest`, or `dest` with `-1`, `-2`... before its suffix when a file of that name is there
    (a camera that reuses names must not overwrite what it sent before)."""
    candidate, n = dest, 0
    while candidate.exists():
        n += 1
        candidate = dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
    return candidate


def make_doors(context: DoorContext) -> list[Door]:
    """Entry point `folder`: one door per `[[edge.watched_folders]]`."""
    settings = context.settings
    return [FolderDoor(folder, settings.site, context.gateway, workers=min(settings.capture_workers, 4))
            for folder in settings.watched_folders]
