"""The edge's durable spool: ordering, duplicates, the disk budget, crash safety."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge2core.common.events import PhotoRecord, Source
from edge2core.edge.spool import Spool, SpoolFull, WhenFull
from tests.support.paths import REPO


def photo(n: int, size: int = 100) -> tuple[PhotoRecord, bytes]:
    """Distinct bytes and the record the edge would spool them with."""
    seed = f"photo-{n}".encode()
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    record = PhotoRecord(
        site="store-1",
        device="kiosk-a",
        source=Source.KIOSK,
        sku=f"SKU-{n:04d}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=64,
        height=48,
    )
    return record, data


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", budget_bytes=10_000)
    yield s
    s.close()


def test_put_read_remove(spool: Spool) -> None:
    record, data = photo(1)
    assert spool.put(record, data, priority=0) is True
    assert spool.read(record.sha256) == data
    [item] = spool.pending(10)
    assert item.sha256 == record.sha256
    assert item.size == len(data)
    assert item.priority == 0
    assert item.record == record

    spool.remove(record.sha256)
    assert spool.pending(10) == []
    with pytest.raises(FileNotFoundError):
        spool.read(record.sha256)
    assert object_files(spool.root) == []
    spool.remove(record.sha256)  # removing twice is harmless (a repeated confirmation)
    assert spool.stats().items == 0


def test_duplicate_put_returns_false_and_stores_once(spool: Spool) -> None:
    record, data = photo(1)
    assert spool.put(record, data, priority=0) is True
    again = record.model_copy(update={"device": "kiosk-b"})
    assert spool.put(again, data, priority=5) is False
    [item] = spool.pending(10)
    assert item.record.device == "kiosk-a"  # the first one stays as it was
    assert item.priority == 0
    assert spool.stats().items == 1
    assert spool.stats().bytes == len(data)
    assert len(object_files(spool.root)) == 1


def test_pending_orders_by_priority_then_age(spool: Spool) -> None:
    puts = [(1, 0), (2, 5), (3, 0), (4, 5), (5, 1)]  # (photo, priority) in arrival order
    shas = {}
    for n, prio in puts:
        record, data = photo(n)
        shas[n] = record.sha256
        spool.put(record, data, priority=prio)
    order = [item.sha256 for item in spool.pending(10)]
    assert order == [shas[n] for n in (2, 4, 5, 1, 3)]
    assert [i.sha256 for i in spool.pending(2)] == [shas[2], shas[4]]
    created = [i.created for i in spool.pending(10) if i.priority == 0]
    assert created == sorted(created)


def test_pending_honours_exclude_and_still_fills_the_limit(spool: Spool) -> None:
    shas = []
    for n in range(6):
        record, data = photo(n)
        spool.put(record, data, priority=0)
        shas.append(record.sha256)
    in_flight = frozenset(shas[:3])
    got = [i.sha256 for i in spool.pending(3, exclude=in_flight)]
    assert got == shas[3:6]
    assert not in_flight & set(got)
    assert [i.sha256 for i in spool.pending(2, exclude=frozenset({shas[1]}))] == [shas[0], shas[2]]
    assert spool.pending(3, exclude=frozenset(shas)) == []


def test_budget_refuses_without_writing_or_dropping(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", budget_bytes=1000)
    try:
        first, first_data = photo(1, size=600)
        assert spool.put(first, first_data, priority=0)
        big, big_data = photo(2, size=500)
        with pytest.raises(SpoolFull, match="600 of 1000"):
            spool.put(big, big_data, priority=9)
        # Nothing of the refused photo was written; the one already there is untouched.
        assert [p.name for p in object_files(spool.root)] == [first.sha256]
        assert [i.sha256 for i in spool.pending(10)] == [first.sha256]
        assert spool.read(first.sha256) == first_data
        stats = spool.stats()
        assert (stats.items, stats.bytes, stats.budget_bytes) == (1, 600, 1000)
        # Filling exactly to the budget is allowed.
        fits, fits_data = photo(3, size=400)
        assert spool.put(fits, fits_data, priority=0)
        assert spool.stats().bytes == 1000
        # Once a photo leaves, there is room again.
        spool.remove(first.sha256)
        assert spool.put(big, big_data, priority=9)
    finally:
        spool.close()


def test_stats(spool: Spool) -> None:
    empty = spool.stats()
    assert (empty.items, empty.bytes, empty.budget_bytes, empty.oldest_age_s) == (0, 0, 10_000, None)
    before = time.time()
    for n, size in ((1, 100), (2, 250), (3, 50)):
        record, data = photo(n, size=size)
        spool.put(record, data, priority=n)
    stats = spool.stats()
    after = time.time()
    assert (stats.items, stats.bytes) == (3, 400)
    assert stats.oldest_age_s is not None
    assert 0 <= stats.oldest_age_s <= after - before + 1.0
    oldest = min(i.created for i in spool.pending(10))
    assert before <= oldest <= after


def test_items_survive_close_and_reopen(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, budget_bytes=10_000)
    items = [photo(n) for n in range(3)]
    for n, (record, data) in enumerate(items):
        spool.put(record, data, priority=n)
    before = spool.pending(10)
    spool.close()

    reopened = Spool(root, budget_bytes=10_000)
    try:
        assert reopened.pending(10) == before
        for record, data in items:
            assert reopened.read(record.sha256) == data
        assert reopened.stats().items == 3
        record, data = items[0]
        assert reopened.put(record, data, priority=0) is False  # still known as a duplicate
    finally:
        reopened.close()


def test_orphan_files_are_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, budget_bytes=10_000)
    kept, kept_data = photo(1)
    spool.put(kept, kept_data, priority=0)
    spool.close()

    # A crash after the file was written but before its index row was committed ...
    orphan, orphan_data = photo(2)
    orphan_path = root / "objects" / orphan.sha256[:2] / orphan.sha256
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan_data)
    # ... and one in the middle of the atomic write (its temp file).
    temp_path = root / "objects" / kept.sha256[:2] / ".tmp-crashed"
    temp_path.write_bytes(b"half a photo")

    reopened = Spool(root, budget_bytes=10_000)
    try:
        assert not orphan_path.exists()
        assert not temp_path.exists()
        assert [p.name for p in object_files(root)] == [kept.sha256]
        assert reopened.read(kept.sha256) == kept_data
        assert [i.sha256 for i in reopened.pending(10)] == [kept.sha256]
        assert reopened.stats().bytes == len(kept_data)
        # The orphan was never acknowledged, so the device may send it again.
        assert reopened.put(orphan, orphan_data, priority=0) is True
    finally:
        reopened.close()


_KILLED_AFTER_PUT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edge2core.common.events import PhotoRecord
    from edge2core.edge.spool import Spool

    root, record_json, data_path = sys.argv[1:4]
    spool = Spool(Path(root), budget_bytes=10_000)
    assert spool.put(PhotoRecord.model_validate_json(record_json), Path(data_path).read_bytes(), 3)
    sys.stdout.write("put returned\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no atexit, no flush of anything else
    """
)


def test_item_is_durable_once_put_returns_even_if_the_process_is_killed(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    record, data = photo(7, size=3000)
    data_path = tmp_path / "photo.bin"
    data_path.write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_PUT, str(root), record.model_dump_json(), str(data_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "put returned\n"

    spool = Spool(root, budget_bytes=10_000)
    try:
        [item] = spool.pending(10)
        assert item.sha256 == record.sha256
        assert item.priority == 3
        assert item.record == record
        assert spool.read(record.sha256) == data
        assert spool.stats().bytes == len(data)
    finally:
        spool.close()


# --- eviction policy ---------------------------------------------------------------------




def _record(sha: str, size: int, source: str = "kiosk", sku: str | None = "SKU-1"):
    from edge2core.common.events import PhotoRecord

    return PhotoRecord(site="s1", device="d1", source=source, sku=sku, sha256=sha, size=size,
                       width=1, height=1)


def _sha(i: int) -> str:
    return f"{i:064x}"


def test_evict_policy_drops_lowest_priority_oldest_first_and_records_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", budget_bytes=300, when_full=WhenFull.EVICT)
    spool.put(_record(_sha(1), 100), b"a" * 100, priority=5)
    spool.put(_record(_sha(2), 100), b"b" * 100, priority=8)
    spool.put(_record(_sha(3), 100), b"c" * 100, priority=5)
    assert spool.put(_record(_sha(4), 100, source="shopper", sku=None), b"d" * 100, priority=10)
    remaining = {item.sha256 for item in spool.pending(10)}
    assert remaining == {_sha(2), _sha(3), _sha(4)}  # the oldest priority-5 photo went
    stats = spool.stats()
    assert stats.evicted == 1 and stats.bytes == 300


def test_evict_policy_never_evicts_equal_or_higher_priority(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", budget_bytes=200, when_full=WhenFull.EVICT)
    spool.put(_record(_sha(1), 100), b"a" * 100, priority=10)
    spool.put(_record(_sha(2), 100), b"b" * 100, priority=5)
    with pytest.raises(SpoolFull, match="nothing of lower priority"):
        spool.put(_record(_sha(3), 100), b"c" * 100, priority=5)
    assert {i.sha256 for i in spool.pending(10)} == {_sha(1), _sha(2)}
    assert spool.stats().evicted == 0


def test_refuse_policy_names_the_way_out(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", budget_bytes=100)
    spool.put(_record(_sha(1), 100), b"a" * 100, priority=1)
    with pytest.raises(SpoolFull, match="when_full=evict"):
        spool.put(_record(_sha(2), 10), b"b" * 10, priority=10)


def test_label_counts_survive_removal_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", budget_bytes=10_000)
    spool.put(_record(_sha(1), 10, sku="SKU-9"), b"a" * 10, priority=5)
    spool.put(_record(_sha(2), 10, sku="SKU-9"), b"b" * 10, priority=5)
    spool.remove(_sha(1))
    spool.close()
    assert Spool(tmp_path / "spool", budget_bytes=10_000).label_count("SKU-9") == 2
