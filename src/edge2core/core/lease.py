"""Leases in the core's database: exactly one core process runs the learning loop, and exactly
one runs the scheduler (retention, the KV re-sync), however many serve the API.

A lease is a row (`leases`: name, holder, expiry in seconds since the epoch). Its holder renews
it every `renew_s`; another process takes it only once it has expired, so a holder that dies is
replaced within `ttl_s + renew_s`, and one that stops cleanly hands it over at once (`release`).
Taking and renewing is one conditional UPDATE (holder is me, or the lease has expired): on
PostgreSQL the row lock makes two contenders take turns and only one wins; SQLite serialises
writers anyway. Expiry uses the processes' clocks: keep them in step (NTP); a skew well under
`ttl_s` is harmless.

`hold_and_run` runs a set of jobs while this process holds the lease and cancels them when it
loses it. A job's blocking step already in a worker thread finishes (Python cannot stop a
thread); the next step never starts here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass

from prometheus_client import Gauge
from sqlalchemy import Engine, case, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from edge2core.common.logging import get_logger
from edge2core.core.db.schema import LeaseRow

log = get_logger(__name__)

LEASE_HELD = Gauge("e2c_lease_held", "1 while this core process holds the named lease", ["name"])

LOOP_LEASE = "learning-loop"
SCHEDULER_LEASE = "scheduler"
TTL_S = 6.0  # how long a lease outlives its holder's last renewal
RENEW_S = 1.5  # how often the holder renews it (and others try to take it)

Job = tuple[str, Callable[[], Coroutine[None, None, None]]]  # a name (for logs) and what to run


def process_id() -> str:
    """This process among the core's replicas: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Lease:
    """One named lease, as seen by `holder`. Blocking methods (the database): worker threads.

    `clock` gives seconds since the epoch (tests pass their own)."""

    engine: Engine
    name: str
    holder: str
    ttl_s: float = TTL_S
    clock: Callable[[], float] = time.time
    _valid_until: float = 0.0  # by our clock: when our last successful renewal runs out

    @property
    def held(self) -> bool:
        """Whether this process may act as the holder now (its last renewal still runs)."""
        return self.clock() < self._valid_until

    def try_hold(self) -> bool:
        """Take the lease if it is free or expired, or renew it if ours; True if held after.
        A database error counts as not renewed (the lease runs out on its own)."""
        now = self.clock()
        expires = now + self.ttl_s
        try:
            taken = self._update(now, expires) or self._insert(now, expires)
        except SQLAlchemyError as exc:
            log.warning("lease not renewed: database error", lease=self.name, error=repr(exc))
            return self.held
        self._valid_until = expires if taken else 0.0
        return taken

    def _update(self, now: float, expires: float) -> bool:
        stmt = (update(LeaseRow)
                .where(LeaseRow.name == self.name,
                       or_(LeaseRow.holder == self.holder, LeaseRow.expires_at < now))
                .values(holder=self.holder, expires_at=expires,
                        acquired_at=case((LeaseRow.holder == self.holder, LeaseRow.acquired_at),
                                         else_=now)))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def _insert(self, now: float, expires: float) -> bool:
        try:
            with self.engine.begin() as conn:
                if conn.scalar(select(LeaseRow.name).where(LeaseRow.name == self.name)):
                    return False  # someone else's, not expired
                conn.execute(insert(LeaseRow).values(name=self.name, holder=self.holder,
                                                     expires_at=expires, acquired_at=now))
        except IntegrityError:  # another process made the row first
            return False
        return True

    def release(self) -> None:
        """Give the lease up now (a clean stop), so another process takes it at once."""
        self._valid_until = 0.0
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(LeaseRow).where(LeaseRow.name == self.name,
                                                    LeaseRow.holder == self.holder))
        except SQLAlchemyError as exc:
            log.warning("lease not released: it expires on its own", lease=self.name,
                        error=repr(exc))

    def current_holder(self) -> str | None:
        """Who holds the lease now per the database (None: nobody, or expired)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(LeaseRow.holder, LeaseRow.expires_at)
                               .where(LeaseRow.name == self.name)).first()
        return row.holder if row is not None and row.expires_at >= self.clock() else None


async def hold_and_run(lease: Lease, jobs: Sequence[Job], renew_s: float = RENEW_S) -> None:
    """Try to hold `lease` every `renew_s`; run `jobs` while held, cancel them once not.
    Runs until cancelled, then stops the jobs and releases the lease."""
    running: list[asyncio.Task[None]] = []
    gauge = LEASE_HELD.labels(name=lease.name)
    gauge.set(0)
    try:
        while True:
            held = await asyncio.to_thread(lease.try_hold)
            if held and not running:
                log.info("lease taken: this process runs its jobs", lease=lease.name,
                         holder=lease.holder, jobs=[name for name, _job in jobs])
                gauge.set(1)
                running = [asyncio.create_task(job(), name=f"{lease.name}:{name}")
                           for name, job in jobs]
            elif not held and running:
                log.warning("lease lost: stopping its jobs", lease=lease.name, holder=lease.holder)
                gauge.set(0)
                await _cancel(running)
                running = []
            await asyncio.sleep(renew_s)
    finally:
        gauge.set(0)
        await _cancel(running)
        if lease.held:
            await asyncio.shield(asyncio.to_thread(lease.release))
            log.info("lease released", lease=lease.name, holder=lease.holder)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
