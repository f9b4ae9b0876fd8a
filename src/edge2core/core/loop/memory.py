"""The learning loop's memory, kept in the database (`loop_memory`): the triggers it holds back
(`Hold`), the products whose rollout stopped (`blocked`), and the last run that went live. Any
core process may take the loop over (`core.lease`) and goes on from where the last one was; a
person's `retry` on any process reaches the one running the loop.

Every write carries a revision; a process reloads only when the stored revision is not the one
it wrote or read last, so its own in-memory changes stand between its writes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.events import utcnow
from edge2core.core.db.schema import LoopMemoryRow
from edge2core.core.loop.decide import Hold

ROW = "learning-loop"


def seen_key(fingerprint: tuple[Any, ...]) -> str:
    """A fingerprint (`decide.fingerprint`: strings, numbers, frozen dataclasses) as a short
    stable text that survives the database: its repr is deterministic."""
    return hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:32]


@dataclass
class Remembered:
    blocked: set[str]
    holds: dict[str, Hold]
    done: tuple[str, str] | None  # (decision_key, seen_key) of the last run that went live


def _hold_to_json(hold: Hold, now_mono: float, now_wall: float) -> dict[str, Any]:
    return {"trigger": hold.trigger, "skus": list(hold.skus), "tries": hold.tries,
            "reason": hold.reason, "seen": hold.seen, "stopped": hold.stopped,
            # monotonic clocks are per process: stored as a wall-clock time
            "next_at": now_wall + (hold.next_at - now_mono), "since": hold.since.isoformat()}


def _hold_from_json(raw: dict[str, Any], now_mono: float, now_wall: float) -> Hold:
    return Hold(str(raw["trigger"]), tuple(raw["skus"]), int(raw["tries"]), str(raw["reason"]),
                str(raw["seen"]), now_mono + (float(raw["next_at"]) - now_wall),
                bool(raw["stopped"]), datetime.fromisoformat(raw["since"]))


class LoopMemory:
    """Load and save the loop's memory. Blocking (the database)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.rev = 0  # the stored revision this process wrote or read last
        self._last: Any = None  # what it wrote or read last (skips writes that change nothing)

    def changed_elsewhere(self) -> bool:
        with self.sessions() as session:
            state = session.scalar(select(LoopMemoryRow.state).where(LoopMemoryRow.name == ROW))
        return state is not None and int(state.get("rev", 0)) != self.rev

    def load(self) -> Remembered:
        with self.sessions() as session:
            state = session.scalar(select(LoopMemoryRow.state).where(LoopMemoryRow.name == ROW))
        state = state or {}
        self.rev = int(state.get("rev", 0))
        mono, wall = time.monotonic(), time.time()
        done = state.get("done")
        remembered = Remembered(
            set(state.get("blocked", [])),
            {key: _hold_from_json(raw, mono, wall) for key, raw in state.get("holds", {}).items()},
            (str(done[0]), str(done[1])) if done else None)
        self._last = _comparable(remembered)
        return remembered

    def save(self, remembered: Remembered) -> None:
        """Write the memory if it changed since this process last wrote or read it."""
        comparable = _comparable(remembered)
        if comparable == self._last:
            return
        mono, wall = time.monotonic(), time.time()
        state: dict[str, Any] = {"rev": self.rev + 1, "blocked": sorted(remembered.blocked),
                 "holds": {k: _hold_to_json(h, mono, wall) for k, h in remembered.holds.items()},
                 "done": list(remembered.done) if remembered.done else None}
        with self.sessions.begin() as session:
            row = session.get(LoopMemoryRow, ROW, with_for_update=True)
            if row is None:
                session.add(LoopMemoryRow(name=ROW, state=state, updated_at=utcnow()))
            else:
                state["rev"] = max(self.rev, int(row.state.get("rev", 0))) + 1
                row.state, row.updated_at = state, utcnow()
        self.rev = int(state["rev"])
        self._last = comparable


def _comparable(remembered: Remembered) -> Any:
    return (sorted(remembered.blocked), sorted((k, h) for k, h in remembered.holds.items()),
            remembered.done)
