"""Object storage behind one small interface: a local directory by default, S3 for scale.

Keys are relative, slash-separated paths ("images/ab/abcdef...jpg"). Writes are atomic: a
reader sees the whole object or none of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from edge2core.common.fsutil import fsync_dir, move_durable, write_atomic


class ObjectNotFound(KeyError):
    pass


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None:
        """Take ownership of a finished local file (moved or uploaded, then gone)."""
    def open(self, key: str) -> BinaryIO: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...
    def staging_dir(self) -> Path:
        """A local folder for in-progress uploads that `put_file` can take from cheaply."""


def validate_key(key: str) -> str:
    # Split by hand: PurePosixPath drops "." and empty parts, hiding aliases like "a//b".
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"invalid object key {key!r}: use a relative path without '..'")
    return key


class LocalObjectStore:
    """A directory tree; fsync'd atomic writes make it safe to acknowledge after `put`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / ".staging"
        self._staging.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), [data])

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        return write_atomic(self._path(key), chunks)

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
        dest = self._path(key)
        try:
            move_durable(path, dest)
        except OSError:
            # Different file system: copy durably, then drop the source.
            with path.open("rb") as fh:
                write_atomic(dest, iter(lambda: fh.read(1 << 20), b""))
            path.unlink()

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def staging_dir(self) -> Path:
        return self._staging


def image_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.jpg"
