"""Waiting for a condition: `wait_until` (blocking) and `until` (in an event loop).

Both poll `cond` every `every` seconds until it returns a true value, return that value, and
raise `TimeoutError` naming `what` once `timeout` seconds have passed. The demo, the benchmarks
and the tests wait with these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

WAIT = 10.0  # default upper bound of the blocking wait
ASYNC_WAIT = 20.0  # default upper bound of the async wait


def _timed_out(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def wait_until(cond: Callable[[], T], timeout: float = WAIT, what: str = "condition",
               every: float = 0.02) -> T:
    """Block until `cond()` is true and return what it returned; `TimeoutError` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        time.sleep(every)
    return value


async def until(cond: Callable[[], T], what: str = "condition", timeout: float = ASYNC_WAIT,
                every: float = 0.05, task: asyncio.Task[Any] | None = None) -> T:
    """Sleep in the running loop until `cond()` is true and return what it returned;
    `TimeoutError` after `timeout` seconds.

    With `task` (a background loop the condition depends on): if it ends first, what it raised
    is raised here, else an `AssertionError` saying it stopped before `what`.
    """
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if task is not None and task.done():
            task.result()  # raises what ended the background loop
            raise AssertionError(f"the background loop stopped before {what}")
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(every)
    return value
