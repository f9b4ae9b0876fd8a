"""The edge's spool under the faults of a box in a shop: a power cut between a write and its
fsync, an index file corrupted on disk, a full disk. The spool repairs or quarantines, never
crashes, never drops an acknowledged photo silently, and refuses clearly when it cannot keep.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge2core.edge.spool import Spool, SpoolFull
from tests.edge.test_spool import photo
from tests.faults.volumes import Filler, Tmpfs, can_mount
from tests.support.paths import REPO

# A child process spools photos and SIGKILLs itself at its Nth fsync: the bytes were written
# but the fsync never ran (a process crash at the worst moment; the page cache survives it,
# a power cut would not, which is why an unacknowledged photo may also vanish: both are fine).
TORN = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.edge.test_spool import photo
    from edge2core.edge.spool import Spool
    root, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    spool = Spool(root, 10**9)
    calls = 0
    real_fsync = os.fsync
    def fsync(fd):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)
    os.fsync = fsync
    for n in range(1000, 1010):
        record, data = photo(n, 3000)
        spool.put(record, data, priority=1)
        print(json.dumps(record.sha256), flush=True)  # acknowledged: put returned
""")


@pytest.mark.parametrize("kill_at", [1, 2, 3, 5, 8, 13])
def test_killed_between_write_and_fsync_keeps_every_acknowledged_photo(
    tmp_path: Path, kill_at: int
) -> None:
    root = tmp_path / "spool"
    before = Spool(root, 10**9)
    for n in range(3):  # already acknowledged before the crash
        before.put(*photo(n, 3000), priority=1)
    before.close()
    child = subprocess.run([sys.executable, "-c", TORN.format(repo=str(REPO)), str(root),
                            str(kill_at)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr  # it died at that fsync
    acknowledged = [photo(n, 3000)[0].sha256 for n in range(3)]
    acknowledged += [json.loads(line) for line in child.stdout.split()]

    spool = Spool(root, 10**9)  # starts: no exception, whatever state the crash left
    try:
        held = {item.sha256 for item in spool.pending(100)}
        assert set(acknowledged) <= held
        for item in spool.pending(100):  # every row has its whole photo, byte for byte
            assert spool.read(item.sha256) == photo_bytes(item.sha256)
        leftovers = [p for p in (root / "objects").rglob("*") if p.is_file()
                     and p.name not in held]
        assert leftovers == []  # half-written temp files and unindexed bytes are gone
        assert spool.stats().items == len(held)
    finally:
        spool.close()


def photo_bytes(sha256: str) -> bytes:
    for n in [*range(3), *range(1000, 1010)]:
        record, data = photo(n, 3000)
        if record.sha256 == sha256:
            return data
    raise AssertionError(f"unknown photo {sha256}")


def _filled(tmp_path: Path, n: int = 6) -> tuple[Path, list[str]]:
    root = tmp_path / "spool"
    spool = Spool(root, 10**9)
    shas = []
    for i in range(n):
        record, data = photo(i, 5000)
        spool.put(record, data, priority=1)
        shas.append(record.sha256)
    spool.close()
    return root, shas


def test_an_index_that_is_not_a_database_is_quarantined_not_fatal(tmp_path: Path) -> None:
    root, shas = _filled(tmp_path)
    (root / "index.db").write_bytes(b"this is not an SQLite file" * 200)
    for name in ("index.db-wal", "index.db-shm"):
        (root / name).unlink(missing_ok=True)
    spool = Spool(root, 10**9)  # no crash
    try:
        assert spool.stats().items == 0  # nothing readable: nothing claimed
        record, data = photo(99, 5000)
        assert spool.put(record, data, priority=1)  # and it works
        [folder] = (root / "quarantine").iterdir()
        kept = {p.name for p in folder.iterdir()}
        assert "index.db" in kept
        assert set(shas) <= kept  # the photos are put aside for an operator, never deleted
    finally:
        spool.close()


def test_a_damaged_index_keeps_every_row_it_can_still_read(tmp_path: Path) -> None:
    root, shas = _filled(tmp_path, n=40)
    db = sqlite3.connect(root / "index.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray((root / "index.db").read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[-page:] = os.urandom(page)  # the last page (of an index or the table) is garbage
    (root / "index.db").write_bytes(bytes(data))
    spool = Spool(root, 10**9)
    try:
        held = {item.sha256 for item in spool.pending(100)}
        quarantined = set()
        for folder in (root / "quarantine").glob("index-*"):
            quarantined |= {p.name for p in folder.iterdir()}
        assert set(shas) <= held | quarantined  # each photo: still queued, or put aside
        for sha in held:
            assert spool.read(sha)
    finally:
        spool.close()


@pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))
def test_a_full_disk_is_a_clear_refusal_and_recovers(tmp_path: Path) -> None:
    with Tmpfs(tmp_path / "volume", size_mb=4) as volume:
        spool = Spool(volume.path / "spool", 10**9)  # the budget is not what stops it
        filler = Filler(volume.path, leave_bytes=200_000)
        filler.fill()
        kept: list[str] = []
        with pytest.raises(SpoolFull, match="disk is full"):
            for n in range(200):
                record, data = photo(n, 20_000)
                spool.put(record, data, priority=1)
                kept.append(record.sha256)
        assert kept, "nothing fitted: the test proves nothing"
        assert {item.sha256 for item in spool.pending(500)} == set(kept)
        assert spool.stats().items == len(kept)
        filler.release()
        record, data = photo(500, 20_000)
        assert spool.put(record, data, priority=1)  # room again: it keeps photos again
        spool.close()
        again = Spool(volume.path / "spool", 10**9)  # and its index is sound
        try:
            assert {item.sha256 for item in again.pending(500)} == {*kept, record.sha256}
            for sha in kept:
                assert again.read(sha) == photo_bytes_of(sha, 20_000)
        finally:
            again.close()


def photo_bytes_of(sha256: str, size: int) -> bytes:
    for n in range(501):
        record, data = photo(n, size)
        if record.sha256 == sha256:
            return data
    raise AssertionError(sha256)
