"""Small volumes that fill up: a tmpfs of a few MB mounted for one scenario (needs root), and
a filler file that takes every free byte of it until removed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path


def can_mount() -> str | None:
    """None when this process may mount a tmpfs, else the reason it may not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not found"
    return None


class Tmpfs:
    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs",
                        str(self.path)], check=True, capture_output=True)
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


class Filler:
    """Takes all free space of the volume holding `folder`; `release()` gives it back."""

    def __init__(self, folder: Path, leave_bytes: int = 0) -> None:
        self.path = folder / "filler.bin"
        self.leave_bytes = leave_bytes

    def fill(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        block = b"\0" * (64 * 1024)
        with self.path.open("wb") as fh:
            while True:
                free = shutil.disk_usage(self.path.parent).free
                if free <= self.leave_bytes:
                    break
                try:
                    fh.write(block[: max(1, min(len(block), free - self.leave_bytes))])
                    fh.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                written += len(block)
        return written

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
