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
