"""The order photos are recorded in across core processes, and what each process must learn
from the others before deciding a new photo's near-duplicate group.

Several core processes on one PostgreSQL record photos side by side. Each keeps its own
near-duplicate index in memory, so before a batch is recorded the process (1) takes the
`images` counter's row lock by advancing it (`claim`): recorders take turns from there to their
commit, as threads of one process take turns on the index's lock; (2) adds to its index the
rows the others recorded since it last looked (`ingest_seq` above what it has seen), or reloads
it whole if anyone erased photos since (the `near_dups_epoch` counter); (3) decides the groups
and inserts its rows, numbered from the counter, in the same transaction. Two processes thus
group twins exactly as one process would.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edge2core.core.db.schema import CounterRow, ImageRow
from edge2core.core.ingest.near_dups import NearDupIndex

IMAGES = "images"
EPOCH = "near_dups_epoch"


def advance(session: Session, name: str, by: int) -> int:
    """Add `by` to counter `name` (made at 0 if missing) and return its new value; the row stays
    locked until the session's transaction ends."""
    stmt = (update(CounterRow).where(CounterRow.name == name)
            .values(value=CounterRow.value + by).returning(CounterRow.value))
    value = session.execute(stmt).scalar()
    if value is None:
        try:
            with session.begin_nested():
                session.execute(insert(CounterRow).values(name=name, value=0))
        except IntegrityError:
            pass  # another process made it first
        value = session.execute(stmt).scalar_one()
    return int(value)


def read(session: Session, name: str) -> int:
    return int(session.scalar(select(CounterRow.value).where(CounterRow.name == name)) or 0)


def _hashes(session: Session, after: int | None, upto: int) -> list[tuple[int, str]]:
    """(hash, group) of recorded photos, in recording order: all of them (`after` None; rows
    from before the counter first, oldest first), or those numbered (after, upto]."""
    stmt = select(ImageRow.phash, ImageRow.dup_group).where(ImageRow.phash.is_not(None))
    if after is None:
        stmt = stmt.order_by(func.coalesce(ImageRow.ingest_seq, 0), ImageRow.stored_at,
                             ImageRow.sha256)
    else:
        stmt = stmt.where(ImageRow.ingest_seq > after, ImageRow.ingest_seq <= upto
                          ).order_by(ImageRow.ingest_seq)
    return [(int(h, 16), g) for h, g in session.execute(stmt) if h is not None and g is not None]


@dataclass
class SharedIndex:
    """A process's view of the photos every process recorded: which numbers it has seen."""

    index: NearDupIndex
    seen: int = 0
    epoch: int = -1

    def claim(self, session: Session, count: int) -> int:
        """Take the recorders' turn for `count` photos and catch the index up to everything
        recorded before; returns the first number of this batch. With `index.lock` held."""
        top = advance(session, IMAGES, count)
        base = top - count
        epoch = read(session, EPOCH)
        if not self.index.loaded or epoch != self.epoch:
            self.index.reset(_hashes(session, None, base))
        elif base > self.seen:
            self.index.extend(_hashes(session, self.seen, base))
        self.epoch = epoch
        self.seen = top  # once committed; `forget` makes the next claim reload otherwise
        return base + 1

    def forget(self) -> None:
        """The batch did not commit: the index holds rows that are not there; reload next time."""
        self.index.invalidate_locked()


def bump_epoch(sessions: sessionmaker[Session]) -> None:
    """Tell every process to reload its index (photos were erased or taken back)."""
    with sessions.begin() as session:
        advance(session, EPOCH, 1)
