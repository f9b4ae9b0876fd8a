"""Background loops that outlive their own failures, on both roles.

`supervised(name, run)` awaits `run()` again and again; when it raises, the failure is logged
with its traceback and `run` goes again after `delay_s`. A loop written as "one pass" (wait,
then work) thus becomes a loop that a bug in one pass cannot silently stop: the edge's
forwarder and model agent, the core's KV re-sync, retention and learning loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from edge2core.common.logging import get_logger

log = get_logger(__name__)


async def supervised(name: str, run: Callable[[], Awaitable[None]], delay_s: float = 2.0) -> None:
    """Run `run` forever; log a failure and go again after `delay_s` (cancelling stops it)."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; trying again", task=name, delay_s=delay_s)
            await asyncio.sleep(delay_s)



async def restart_when_dead(name: str, is_running: Callable[[], bool], start: Callable[[], object],
                            *, healthy: Callable[[], bool] | None = None,
                            stop: Callable[[], object] | None = None, every_s: float = 1.0,
                            unhealthy_after: int = 10) -> None:
    """Look every `every_s` seconds whether a child server (the embedded nats-server) still
    runs, and start it again when it died (kill -9, the OOM killer). With `healthy` (called in
    a thread) and `stop`: a server that answers unhealthy `unhealthy_after` times in a row is
    restarted too (nats-server keeps refusing writes to a stream after one failed write on a
    full disk, even once space returns, until it restarts).

    `start` runs on the event loop's own thread on purpose: the child dies with the thread
    that forked it (PDEATHSIG), so it must not be forked from a pool thread; a restart blocks
    the loop for the ~0.5 s the server takes to come up. `start` raising propagates (wrap
    this in `supervised`)."""
    failures = 0
    while True:
        await asyncio.sleep(every_s)
        if not is_running():
            log.error("child server died; starting it again", server=name)
        elif healthy is not None and stop is not None:
            failures = 0 if await asyncio.to_thread(healthy) else failures + 1
            if failures < unhealthy_after:
                continue
            log.error("child server unhealthy; restarting it", server=name, checks=failures)
            stop()
        else:
            continue
        failures = 0
        start()
        log.info("child server restarted", server=name)
