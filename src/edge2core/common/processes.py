"""Child processes that never outlive their parent (servers, demo roles)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent_preexec() -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child get SIGKILL when the parent dies.

    Only on Linux (prctl). Note the "parent" is the *thread* that forked: spawn
    the server from a long-lived thread (normally the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    parent_pid = os.getpid()
    # Resolve prctl in the parent: dlopen/dlsym after fork() in a threaded
    # process can deadlock on loader locks held by another thread.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return _preexec


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup (garbage collection / interpreter exit) without waiting long."""
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def read_tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<log unavailable: {exc}>"
