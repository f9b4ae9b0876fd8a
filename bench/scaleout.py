"""The core scaling out: photos per second through 1 and 2 core processes on PostgreSQL, and
photos straight to S3 (presigned PUTs) against photos through the core into S3, in one run.

1. One process, two processes: the real core app (`build_core_services` + uvicorn, as `core up`
   serves it; no broker, no learning loop) in a process of its own on a fresh PostgreSQL
   database (127.0.0.1:5432) and an object store folder, behind a round-robin TCP proxy
   (`_rr_proxy.py`, its own process); then a second core process joins it on the same database
   and folder, behind a new proxy over both (the one-process case goes through a proxy too, so
   both pay for the same hop). 8 lean keep-alive uploaders (`receiver.upload_lean`:
   the one-shot PUT, a few lines of asyncio, so the client's CPU stays small) send distinct
   prepared photos (1024x768 JPEG, ~150 KB, `receiver.prepared_photos`).
2. Through the core vs direct to S3: one core process on a fresh PostgreSQL database with an S3
   store on moto's server (its own process, a fresh bucket); 8 uploaders through the edge's
   real `CoreClient`, with `direct_uploads` off (PUT to the core, which writes S3) and on
   (grant, PUT to S3, commit: the core reads the object back to check and hash it, copies it
   in place inside S3 and records it), in turn (the order rotates between repeats).

Every repeat starts fresh processes and fresh databases; each case sends a few warm-up photos
(distinct ones: every photo in a run is new), then times the rest; the cores' CPU (user +
system, psutil) over the timed part is divided by its photos (`*_core_cpu_ms_per_photo`);
moto's and the proxy's are reported apart. Each case checks that every photo was recorded once
(row count) and stored byte for byte (a sample).

This machine has 2 CPU cores, shared by the cores, the proxy, moto, PostgreSQL and the
uploaders: two core processes cannot show 2x here (nor more than 1x: a second process adds no
CPU). What the two-process case shows is that round robin spreads the photos over both while
nothing is lost or doubled, and what a photo costs each process; the CPU per photo is the
number that carries to bigger machines. Likewise moto, a Python server on the same
two cores, is far slower than S3: what the direct path saves is the core's work per photo
(and its network: the bytes no longer enter it from the sites), not this machine's wall clock.

    .venv/bin/python bench/scaleout.py [--quick]

`--quick` (about a minute): one repeat of smaller batches. Progress on stderr; the last stdout
line is one JSON object: one_process_photos_per_s, two_processes_photos_per_s,
direct_s3_photos_per_s, through_core_s3_photos_per_s, their ratios, core CPU ms per photo of
each (medians over repeats) and per-repeat values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, emit, median, say
from receiver import UPLOADERS, prepared_photos, records, upload_lean

from edge2core.common.events import PhotoRecord
from edge2core.common.net import free_port, wait_for_port
from edge2core.common.objectstore import image_key

HERE = Path(__file__).resolve().parent
PG_SERVER = os.environ.get("E2C_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
WARM = 16
CASES = ("one_process", "two_processes", "through_core_s3", "direct_s3")
S3_KEYS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing"}


# --- the parts, each in a process of its own -----------------------------------------------


def _serve(data_dir: str, port: int, settings: dict[str, Any]) -> None:
    import uvicorn

    from edge2core.config import CoreSettings
    from edge2core.core.api.app import create_core_app
    from edge2core.core.service import build_core_services

    services = build_core_services(CoreSettings(data_dir=Path(data_dir), **settings))
    uvicorn.run(create_core_app(services), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def _admin(sql: str) -> None:
    from sqlalchemy import text

    from edge2core.core.db.engine import make_engine

    engine = make_engine(f"{PG_SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one case, dropped afterwards."""
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Processes:
    """Started processes, stopped (and waited for) on exit; pids for CPU accounting."""

    def __init__(self) -> None:
        self._procs: list[Any] = []

    def core(self, data_dir: Path, settings: dict[str, Any]) -> tuple[int, int]:
        """A core process; (pid, port) once it listens. Started one at a time: each migrates
        the database first, and two migrations at once would race."""
        port = free_port()
        proc = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(str(data_dir), port, settings), daemon=True)
        proc.start()
        self._procs.append(proc)
        wait_for_port("127.0.0.1", port, timeout=120)
        assert proc.pid is not None
        return proc.pid, port

    def command(self, args: list[str], port: int) -> int:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        wait_for_port("127.0.0.1", port, timeout=60)
        return proc.pid

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            if isinstance(proc, subprocess.Popen):
                proc.wait(10)
            else:
                proc.join(10)
        self._procs = []


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def moto(procs: Processes) -> tuple[int, str]:
    """moto's S3 server in its own process: (pid, endpoint)."""
    port = free_port()
    pid = procs.command(["-c", "from moto.server import main; main()", "-H", "127.0.0.1",
                         "-p", str(port)], port)
    return pid, f"http://127.0.0.1:{port}"


def make_bucket(endpoint: str, bucket: str) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    return client


# --- uploads and checks --------------------------------------------------------------------


async def upload_with_client(url: str, recs: list[PhotoRecord], photos: list[bytes],
                             direct: bool) -> float:
    """8 uploaders sharing the edge's real `CoreClient`; seconds taken."""
    from edge2core.edge.core_client import CoreClient

    client = CoreClient(url, timeout_s=60, direct_uploads=direct)
    queue = list(zip(recs, photos, strict=True))

    async def uploader(k: int) -> None:
        for record, data in queue[k::UPLOADERS]:
            receipt = await client.upload(record, data)
            assert receipt["created"] and receipt["key"] == image_key(record.sha256), receipt

    start = time.perf_counter()
    try:
        await asyncio.gather(*(uploader(k) for k in range(UPLOADERS)))
    finally:
        await client.aclose()
    if direct:
        assert client.direct is not None and client.direct.offered, "the core offered no direct path"
    return time.perf_counter() - start


def rows(db_url: str) -> int:
    from sqlalchemy import func, select

    from edge2core.core.db.engine import make_engine
    from edge2core.core.db.schema import ImageRow

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(ImageRow)) or 0)
    finally:
        engine.dispose()


def check_stored(db_url: str, photos: list[bytes], read: Any) -> None:
    """Every photo recorded once; a sample stored byte for byte (`read(key) -> bytes`)."""
    assert rows(db_url) == len(photos), (rows(db_url), len(photos))
    for data in photos[:: max(1, len(photos) // 8)]:
        assert read(image_key(hashlib.sha256(data).hexdigest())) == data


# --- the cases -----------------------------------------------------------------------------


def timed_cpu(pids: list[int], upload: Coroutine[Any, Any, float]) -> tuple[float, list[float]]:
    """Seconds the `upload` took (its answer) and the CPU seconds each of `pids` used meanwhile."""
    before = [cpu_s([pid]) for pid in pids]
    seconds = asyncio.run(upload)
    return seconds, [cpu_s([pid]) - b for pid, b in zip(pids, before, strict=True)]


def processes_pair(work: Path, photos: tuple[list[bytes], list[bytes]], run: int) -> dict[str, dict]:
    """One core process behind the round-robin proxy, then a second one joining it on the same
    database and object store folder (a new proxy over both); lean one-shot uploaders."""
    procs = Processes()
    objects = work / "objects"
    results: dict[str, dict] = {}
    with fresh_database(f"e2c_bench_scaleout_{os.getpid()}_{run}_p") as db_url:
        try:
            settings = {"database_url": db_url, "object_store_url": str(objects)}
            cores: list[tuple[int, int]] = []
            for count, (name, batch) in enumerate(zip(CASES[:2], photos, strict=True), start=1):
                cores.append(procs.core(work / f"core-{count}", settings))
                port = free_port()
                proxy = procs.command([str(HERE / "_rr_proxy.py"), str(port),
                                       *(str(p) for _pid, p in cores)], port)
                recs = records(batch, run)
                asyncio.run(upload_lean(port, recs[:WARM], batch[:WARM]))
                pids = [pid for pid, _port in cores]
                seconds, used = timed_cpu([*pids, proxy],
                                          upload_lean(port, recs[WARM:], batch[WARM:]))
                core_used, proxy_used = used[:-1], used[-1]
                timed = len(batch) - WARM
                results[name] = {
                    "photos_per_s": timed / seconds,
                    "core_cpu_ms_per_photo": 1000 * sum(core_used) / timed,
                    "cpu_share": [u / sum(core_used) for u in core_used],
                    "proxy_cpu_ms_per_photo": 1000 * proxy_used / timed}
            check_stored(db_url, [p for batch in photos for p in batch],
                         lambda key: (objects / key).read_bytes())
        finally:
            procs.stop()
    return results


def s3_pair(work: Path, photos: tuple[list[bytes], list[bytes]], run: int) -> dict[str, dict]:
    """One core process on S3 (moto) and PostgreSQL, taking photos through itself and, in
    turn (order rotated per repeat), straight to S3; the edge's `CoreClient` uploaders."""
    procs = Processes()
    bucket = f"e2c-scaleout-{run}"
    results: dict[str, dict] = {}
    with fresh_database(f"e2c_bench_scaleout_{os.getpid()}_{run}_s3") as db_url:
        try:
            moto_pid, endpoint = moto(procs)
            s3 = make_bucket(endpoint, bucket)
            settings = {"database_url": db_url, "object_store_url": f"s3://{bucket}/core",
                        "s3_endpoint_url": endpoint, **S3_KEYS}
            pid, port = procs.core(work / "core-s3", settings)
            url = f"http://127.0.0.1:{port}"
            order = list(zip(CASES[2:], photos, strict=True))
            for name, batch in order[run % 2:] + order[: run % 2]:
                direct = name == "direct_s3"
                recs = records(batch, run)
                asyncio.run(upload_with_client(url, recs[:WARM], batch[:WARM], direct))
                seconds, (used, moto_used) = timed_cpu(
                    [pid, moto_pid], upload_with_client(url, recs[WARM:], batch[WARM:], direct))
                timed = len(batch) - WARM
                results[name] = {"photos_per_s": timed / seconds,
                                 "core_cpu_ms_per_photo": 1000 * used / timed,
                                 "moto_cpu_ms_per_photo": 1000 * moto_used / timed}

            def read(key: str) -> bytes:
                return bytes(s3.get_object(Bucket=bucket, Key=f"core/{key}")["Body"].read())

            check_stored(db_url, [p for batch in photos for p in batch], read)
            deadline = time.monotonic() + 10  # committed uploads are deleted in batches
            while (left := s3.list_objects_v2(Bucket=bucket, Prefix="core/incoming/")
                   .get("KeyCount", 0)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert left == 0, f"{left} uploads left under incoming/"
        finally:
            procs.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    per_case = 160 if args.quick else 480
    per_s3_case = 96 if args.quick else 240
    results: dict[str, list[dict]] = {c: [] for c in CASES}
    with tempfile.TemporaryDirectory(prefix="e2c-bench-scaleout-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        say(f"photos: {PHOTOS.describe()}; {repeats} repeat(s) of {per_case} photos per "
            f"process case and {per_s3_case} per S3 case, on {os.cpu_count()} CPU cores")
        kb: list[float] = []
        for run in range(repeats):
            for pair, n in ((processes_pair, per_case), (s3_pair, per_s3_case)):
                first = 1000 + run * 10 + (0 if pair is processes_pair else 2)
                photos = (prepared_photos(n, first), prepared_photos(n, first + 1))  # distinct
                kb += [len(p) / 1e3 for batch in photos for p in batch]
                for case, got in pair(work / f"r{run}-{pair.__name__}", photos, run).items():
                    results[case].append(got)
                    say(f"run {run + 1}/{repeats} {case}: {got['photos_per_s']:.1f} photos/s, "
                        f"core CPU {got['core_cpu_ms_per_photo']:.2f} ms/photo")
    emit(summary(results, args.quick, sum(kb) / len(kb)), faces=True)


def summary(results: dict[str, list[dict]], quick: bool, photo_kb: float) -> dict[str, Any]:
    def med(case: str, key: str) -> float:
        return median([r[key] for r in results[case]])

    out: dict[str, Any] = {"bench": "scaleout", "quick": quick, "cpu_cores": os.cpu_count(),
                           "uploaders": UPLOADERS, "photo_kb": round(photo_kb, 1)}
    for case in CASES:
        out[f"{case}_photos_per_s"] = round(med(case, "photos_per_s"), 2)
        out[f"{case}_core_cpu_ms_per_photo"] = round(med(case, "core_cpu_ms_per_photo"), 2)
    for case in CASES[2:]:
        out[f"{case}_moto_cpu_ms_per_photo"] = round(med(case, "moto_cpu_ms_per_photo"), 2)
    out["proxy_cpu_ms_per_photo"] = round(median(
        [r["proxy_cpu_ms_per_photo"] for c in CASES[:2] for r in results[c]]), 2)
    out["two_processes_cpu_share"] = [round(s, 3) for s in results["two_processes"][-1]["cpu_share"]]
    out["two_vs_one_ratio"] = round(out["two_processes_photos_per_s"] / out["one_process_photos_per_s"], 3)
    out["two_vs_one_cpu_ratio"] = round(
        out["two_processes_core_cpu_ms_per_photo"] / out["one_process_core_cpu_ms_per_photo"], 3)
    out["direct_vs_through_core_ratio"] = round(
        out["direct_s3_photos_per_s"] / out["through_core_s3_photos_per_s"], 3)
    out["direct_vs_through_core_cpu_ratio"] = round(
        out["direct_s3_core_cpu_ms_per_photo"] / out["through_core_s3_core_cpu_ms_per_photo"], 3)
    out["runs"] = {c: [{k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 3)
                        for k, v in r.items()} for r in results[c]] for c in CASES}
    return out


if __name__ == "__main__":
    main()
