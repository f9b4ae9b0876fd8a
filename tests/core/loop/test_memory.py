"""The learning loop's memory in the database (`loop.memory`), on SQLite and PostgreSQL: a
second core process (its own services on the same database) sees what the first held back and
stopped, and a person's `retry` at either reaches the other."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import utcnow
from edge2core.config import AutomationPolicy, CoreSettings
from edge2core.core.api.deps import CoreServices
from edge2core.core.loop.decide import Hold, fingerprint
from edge2core.core.loop.memory import LoopMemory, Remembered, seen_key
from edge2core.core.service import build_core_services


def hold(tries: int = 2, stopped: bool = False, seen: str = seen_key(("new", 1))) -> Hold:
    return Hold("new", ("SKU-1",), tries, "NothingToTrain: 1 product", seen,
                time.monotonic() + 30, stopped, utcnow())


def test_memory_goes_from_one_process_to_another(sessions: sessionmaker[Session]) -> None:
    first, second = LoopMemory(sessions), LoopMemory(sessions)
    assert not second.changed_elsewhere()  # nothing written yet
    first.save(Remembered({"SKU-2"}, {"new:SKU-1": hold()}, ("retired:SKU-3", "abc")))
    assert second.changed_elsewhere() and not first.changed_elsewhere()
    taken = second.load()
    assert taken.blocked == {"SKU-2"} and taken.done == ("retired:SKU-3", "abc")
    got = taken.holds["new:SKU-1"]
    assert (got.trigger, got.skus, got.tries, got.seen, got.stopped) == ("new", ("SKU-1",), 2,
                                                                         seen_key(("new", 1)), False)
    assert 25 < got.next_at - time.monotonic() <= 30  # the wait goes on where it was
    revision = second.rev
    second.save(taken)  # nothing changed: nothing written
    assert second.rev == revision
    second.save(Remembered(set(), {}, None))
    assert first.changed_elsewhere()
    assert first.load() == Remembered(set(), {}, None)


def test_a_takeover_and_a_retry_at_another_process(db_url: str, tmp_path: Path) -> None:
    def services(name: str) -> CoreServices:
        return build_core_services(CoreSettings(
            data_dir=tmp_path / name, database_url=db_url,
            automation=AutomationPolicy(enabled=True)))

    a, b = services("a"), services("b")
    a.loop.blocked.add("SKU-9")
    # Held with what the loop sees now (a change of its inputs would let it go).
    seen = seen_key(fingerprint("new", ("SKU-1",), a.loop.inputs()))
    a.loop.holds["new:SKU-1"] = hold(tries=3, stopped=True, seen=seen)
    a.loop.retry_limit = 3
    a.loop._persist()  # what a step does on its way out
    # b takes the loop over: it looks with a's memory.
    inputs, _decision = b.loop.look()
    assert "SKU-9" in inputs.blocked
    assert [h["trigger"] for h in b.loop.held()] == ["new"] and b.loop.held()[0]["stopped"]
    # A person says retry at a (behind a load balancer: any process); b, running the loop,
    # forgets the stopped trigger too.
    assert a.loop.retry() == ["SKU-9", "new:SKU-1"]
    assert b.loop.held() == [] and b.loop.blocked == set()
