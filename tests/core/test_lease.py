"""Leases in the database (`core.lease`), on SQLite and PostgreSQL: one holder at a time, taken
over only once expired, handed over at once on release; `hold_and_run` runs jobs only while
held. Two `Lease` objects with their own engines stand for two core processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from edge2core.core.db.engine import make_engine
from edge2core.core.lease import LEASE_HELD, Lease, hold_and_run


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engines(sessions: sessionmaker[Session], db_url: str) -> Iterator[tuple[Engine, Engine]]:
    first, second = make_engine(db_url), make_engine(db_url)
    yield first, second
    first.dispose()
    second.dispose()


def test_one_holder_until_it_expires_or_releases(engines: tuple[Engine, Engine]) -> None:
    clock = Clock()
    a = Lease(engines[0], "loop", "process-a", ttl_s=6, clock=clock)
    b = Lease(engines[1], "loop", "process-b", ttl_s=6, clock=clock)
    assert a.try_hold() and a.held
    assert not b.try_hold() and not b.held
    clock.now += 5
    assert a.try_hold()  # renewed: good for 6 s from now
    clock.now += 5
    assert not b.try_hold()
    assert b.current_holder() == "process-a"
    clock.now += 2  # a stopped renewing 7 s ago: expired
    assert not a.held
    assert b.try_hold() and b.current_holder() == "process-b"
    assert not a.try_hold()  # the old holder does not get it back while b renews
    b.release()
    assert not b.held and b.current_holder() is None
    assert a.try_hold()  # at once, no expiry to wait for


def test_two_contenders_at_the_same_moment_one_wins(engines: tuple[Engine, Engine]) -> None:
    clock = Clock()
    leases = [Lease(engine, "scheduler", f"process-{i}", clock=clock)
              for i, engine in enumerate(engines)]

    async def both() -> list[bool]:
        return list(await asyncio.gather(*(asyncio.to_thread(lease.try_hold) for lease in leases)))

    assert sorted(asyncio.run(both())) == [False, True]


def test_jobs_run_only_while_the_lease_is_held(engines: tuple[Engine, Engine]) -> None:
    clock = Clock()
    mine = Lease(engines[0], "learning-loop", "process-a", ttl_s=6, clock=clock)
    theirs = Lease(engines[1], "learning-loop", "process-b", ttl_s=6, clock=clock)
    started, stopped = asyncio.Event(), asyncio.Event()

    async def job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async def scenario() -> None:
        assert theirs.try_hold()
        runner = asyncio.create_task(hold_and_run(mine, [("job", job)], renew_s=0.01))
        await asyncio.sleep(0.1)
        assert not started.is_set()  # someone else holds it
        assert LEASE_HELD.labels(name="learning-loop")._value.get() == 0
        clock.now += 7  # theirs expires
        await asyncio.wait_for(started.wait(), 5)
        assert LEASE_HELD.labels(name="learning-loop")._value.get() == 1
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert stopped.is_set()
        assert theirs.try_hold()  # released on the way out: taken at once

    asyncio.run(scenario())
