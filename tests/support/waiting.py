"""Waiting for a condition in tests: `wait_until` (blocking) and `until` (in an event loop).

Both poll `cond` every `every` seconds and raise `TimeoutError` naming `what` once `timeout`
seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WAIT = 10.0  # default upper bound of the blocking wait
ASYNC_WAIT = 20.0  # default upper bound of the async wait


def wait_until(cond: Callable[[], object], timeout: float = WAIT, what: str = "condition",
               every: float = 0.02) -> None:
    """Block until `cond()` is true; `TimeoutError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def until(cond: Callable[[], object], what: str = "condition", timeout: float = ASYNC_WAIT,
                every: float = 0.05, task: asyncio.Task | None = None) -> None:
    """Sleep in the running loop until `cond()` is true; `TimeoutError` after `timeout` seconds.

    With `task` (a background loop the condition depends on): if it ends first, what it raised
    is raised here, else an `AssertionError` saying it stopped before `what`.
    """
    deadline = time.monotonic() + timeout
    while not cond():
        if task is not None and task.done():
            task.result()  # raises what ended the background loop
            raise AssertionError(f"the background loop stopped before {what}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)
