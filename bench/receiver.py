"""Receiver throughput and dataset build time.

1. Receiver: 8 concurrent edge uploaders (the edge's real `CoreClient`) send prepared photos to
   the real core app (uvicorn, its own process; SQLite + local object store), which hashes,
   fsyncs, re-checks privacy, computes the perceptual hash, stores and records each one. The
   core runs as `edge2core core up` runs it: uvicorn with its defaults, which pick httptools
   and uvloop when installed (the `core` extra installs them); one process. The
   baseline writes the same bytes straight into a local object store of the same kind on the
   same disk (fsync'd atomic writes, 8 threads), in the same run. Repeats alternate the two.
   Main case: prepared phone photos (1024x768 JPEG, ~150 KB); also reported: 348 px grocery
   photos (~30 KB), where per-request cost dominates, and 3000x2250 photos (a few MB), where
   per-byte cost does.
2. Dataset build: 100 000 image rows bulk-inserted into a migrated SQLite database, then
   `DatasetStore.build` (query, Parquet manifest, hash, store, stats) timed.

    .venv/bin/python bench/receiver.py [--quick]

Uploaders: `ours_mb_s` uses 8 lean keep-alive HTTP/1.1 uploaders (the receiver's cost, as when
the edges are other machines); `ours_coreclient_mb_s` uses the edge's real `CoreClient` (httpx)
in this process, on the same two cores as the core: both are reported.

Progress on stderr; the last stdout line is one JSON object with ours_mb_s, direct_mb_s,
ratio and build_100k_s (medians over repeats), the CoreClient variant and per-repeat values,
and photo_source (see _common.py: the grocery photos, $E2C_DATASET or synthetic ones; the faces
photo joins the mix when there is one). Every photo uploaded into one core is distinct.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, assert_distinct, emit, median, say, synthetic_photos

from edge2core.common.events import PhotoRecord, Source
from edge2core.common.net import free_port, wait_for_port
from edge2core.common.objectstore import LocalObjectStore, image_key

UPLOADERS = 8


# --- photos --------------------------------------------------------------------------------


def _bases() -> list[Image.Image]:
    """12 grocery photos (or 8 synthetic ones) and the faces photo, when there is one, last."""
    files = PHOTOS.grocery_files()[::97][:12]
    bases = [Image.open(f).convert("RGB") for f in files] or [
        Image.open(io.BytesIO(data)).convert("RGB") for data in synthetic_photos(8, size=512)]
    if PHOTOS.city is not None:
        bases.append(Image.open(PHOTOS.city).convert("RGB"))
    return bases


def prepared_photos(n: int, run: int) -> list[bytes]:
    """Distinct 1024x768 JPEGs like the edge's prepared phone photos (q90, no metadata)."""
    bases = [b.resize((1024, 768), Image.Resampling.BICUBIC) for b in _bases()]
    arrays = [np.asarray(b, dtype=np.int16) for b in bases]
    photos = []
    for i in range(n):
        rng = np.random.default_rng(run * 100_000 + i)
        noise = rng.integers(-4, 5, (768, 1024, 3), dtype=np.int16)
        pixels = np.clip(arrays[i % len(arrays)] + noise, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        photos.append(out.getvalue())
    return photos


def large_photos(n: int, run: int) -> list[bytes]:
    """Distinct 3000x2250 JPEGs (a few MB: over CoreClient's one-shot limit, so its uploads
    take the resumable path)."""
    base = np.asarray(_bases()[-1].resize((3000, 2250), Image.Resampling.BICUBIC),
                      dtype=np.int16)
    photos = []
    for i in range(n):
        rng = np.random.default_rng(run * 1000 + i + 7)
        noise = rng.integers(-6, 7, base.shape, dtype=np.int16)
        out = io.BytesIO()
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=92)
        photos.append(out.getvalue())
    return photos


def small_photos(n: int, run: int) -> list[bytes]:
    """348 px grocery photos, made distinct per run by re-encoding; or `n` synthetic ones,
    distinct across runs (photo indices run * n ...)."""
    files = PHOTOS.grocery_files()[: n]
    if not files:
        return synthetic_photos(n, first=run * n)
    bases = [Image.open(f).convert("RGB") for f in files]
    photos = []
    for i in range(n):
        out = io.BytesIO()
        bases[i % len(bases)].save(out, format="JPEG", quality=80 + (run * 7 + i // len(bases)) % 15)
        photos.append(out.getvalue())
    return list(dict.fromkeys(photos))  # distinct bytes only


def records(photos: list[bytes], run: int) -> list[PhotoRecord]:
    out = []
    for i, data in enumerate(photos):
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        out.append(PhotoRecord(
            site=f"site-{i % 4}", device=f"kiosk-{i % 8}", source=Source.KIOSK,
            sku=f"SKU-{i % 20:03d}", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
            width=width, height=height))
    return out


# --- the core in its own process -----------------------------------------------------------


def _serve(data_dir: str, port: int) -> None:
    import uvicorn

    from edge2core.config import CoreSettings
    from edge2core.core.api.app import create_core_app
    from edge2core.core.service import build_core_services

    services = build_core_services(CoreSettings(data_dir=Path(data_dir)))
    uvicorn.run(create_core_app(services), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


async def upload_all(url: str, recs: list[PhotoRecord], photos: list[bytes]) -> float:
    """8 uploaders sharing the edge's real `CoreClient` (httpx) in this process."""
    from edge2core.edge.core_client import CoreClient

    client = CoreClient(url, timeout_s=60)
    queue = list(zip(recs, photos, strict=True))

    async def uploader(k: int) -> None:
        for record, data in queue[k::UPLOADERS]:
            receipt = await client.upload(record, data)
            assert receipt["created"], receipt

    start = time.perf_counter()
    await asyncio.gather(*(uploader(k) for k in range(UPLOADERS)))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed


async def upload_lean(port: int, recs: list[PhotoRecord], photos: list[bytes]) -> float:
    """8 uploaders, each a keep-alive HTTP/1.1 connection speaking the same PUT protocol with
    a few lines of asyncio: on real deployments the uploaders run on the edge machines, so
    this keeps the client's own CPU cost (httpx is several times heavier) off the core's two
    cores, and measures the receiver."""
    queue = list(zip(recs, photos, strict=True))

    async def uploader(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for record, data in queue[k::UPLOADERS]:
                head = (
                    f"PUT /v1/images/{record.sha256} HTTP/1.1\r\nHost: core\r\n"
                    f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                    f"X-E2C-Meta: {record.model_dump_json()}\r\n\r\n"
                ).encode()
                writer.write(head)
                writer.write(data)
                await writer.drain()
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                assert status.split()[1] == b"201", (status, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(uploader(k) for k in range(UPLOADERS)))
    return time.perf_counter() - start


def direct_all(store: LocalObjectStore, recs: list[PhotoRecord], photos: list[bytes]) -> float:
    def write(k: int) -> None:
        for record, data in list(zip(recs, photos, strict=True))[k::UPLOADERS]:
            store.put(image_key(record.sha256), data)

    start = time.perf_counter()
    with ThreadPoolExecutor(UPLOADERS) as pool:
        list(pool.map(write, range(UPLOADERS)))
    return time.perf_counter() - start


def _start_core(core_dir: Path) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(str(core_dir), port), daemon=True)
    proc.start()
    wait_for_port("127.0.0.1", port, timeout=120)
    return proc, port


def throughput(work: Path, photo_sets: list[list[bytes]], label: str) -> dict:
    """Per repeat, in rotating order: the lean uploaders into one core, the CoreClient
    uploaders into another (fresh) core, and the direct writes into a third store."""
    # One core takes every set of a case: a repeated photo would be a duplicate, not an upload.
    assert_distinct((p for photos in photo_sets for p in photos), f"{label} photos")
    lean_proc, lean_port = _start_core(work / f"core-{label}-lean")
    http_proc, http_port = _start_core(work / f"core-{label}-httpx")
    direct = LocalObjectStore(work / f"direct-{label}")
    results: dict[str, list[float]] = {"ours": [], "coreclient": [], "direct": []}
    try:
        for run, photos in enumerate(photo_sets):
            recs = records(photos, run)
            total = sum(len(p) for p in photos) / 1e6
            kinds = ["ours", "coreclient", "direct"]
            for which in kinds[run % 3 :] + kinds[: run % 3]:
                if which == "ours":
                    seconds = asyncio.run(upload_lean(lean_port, recs, photos))
                elif which == "coreclient":
                    seconds = asyncio.run(upload_all(f"http://127.0.0.1:{http_port}", recs, photos))
                else:
                    seconds = direct_all(direct, recs, photos)
                results[which].append(total / seconds)
            say(f"{label} run {run + 1}/{len(photo_sets)}: {len(photos)} photos, {total:.1f} MB; "
                f"receiver {results['ours'][-1]:.1f} MB/s "
                f"({len(photos) * results['ours'][-1] / total:.0f} photos/s), with CoreClient "
                f"{results['coreclient'][-1]:.1f} MB/s, direct {results['direct'][-1]:.1f} MB/s")
        for core in ("lean", "httpx"):  # everything arrived, byte for byte
            for photos in photo_sets:
                for data in photos[:: max(1, len(photos) // 10)]:
                    sha = hashlib.sha256(data).hexdigest()
                    stored = work / f"core-{label}-{core}" / "objects" / image_key(sha)
                    assert stored.read_bytes() == data
    finally:
        for proc in (lean_proc, http_proc):
            proc.terminate()
            proc.join(10)
    results["mean_kb"] = [sum(len(p) for s in photo_sets for p in s) / 1e3
                          / sum(map(len, photo_sets))]
    return results


# --- dataset build over 100k rows ----------------------------------------------------------


def build_100k(work: Path, repeats: int, n: int = 100_000) -> list[float]:
    from sqlalchemy import insert

    from edge2core.core.curate.datasets import DatasetQuery, DatasetStore
    from edge2core.core.db import migrations
    from edge2core.core.db.engine import make_engine, make_sessionmaker
    from edge2core.core.db.schema import ImageRow
    from edge2core.core.ingest.near_dups import stable_split

    engine = make_engine(f"sqlite:///{work / 'build.db'}")
    migrations.upgrade(engine)
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    start = time.perf_counter()
    with engine.begin() as conn:
        for lo in range(0, n, 10_000):
            rows = []
            for i in range(lo, min(n, lo + 10_000)):
                sha = hashlib.sha256(f"photo-{i}".encode()).hexdigest()
                shopper = i % 10 == 0
                when = t0 + timedelta(seconds=int(i * 30))
                rows.append({
                    "sha256": sha, "key": image_key(sha), "size": 200_000 + i % 5000,
                    "width": 1024, "height": 768, "site": f"site-{i % 20:02d}",
                    "device": f"dev-{i % 200:03d}",
                    "source": "shopper" if shopper else "kiosk", "sku": f"SKU-{i % 150:04d}",
                    "captured_at": when, "received_at": when + timedelta(seconds=5),
                    "stored_at": when + timedelta(seconds=6), "edge_model_version": None,
                    "confidence": None, "top_guesses": [], "split": stable_split(sha, 20),
                    "label_origin": "human" if shopper else "scan",
                    "phash": f"{int(rng.integers(0, 2**63)):016x}", "dup_group": sha,
                    "redaction": None, "quality": None, "sharpness": None,
                })
            conn.execute(insert(ImageRow), rows)
    say(f"inserted {n} rows in {time.perf_counter() - start:.1f} s")
    sessions = make_sessionmaker(engine)
    store = LocalObjectStore(work / "build-objects")
    datasets = DatasetStore(store, sessions)
    times, digest = [], None
    for r in range(repeats):
        for key in list(store.list("datasets/")):
            store.delete(key)  # every build writes its manifest
        start = time.perf_counter()
        info = datasets.build(DatasetQuery())
        times.append(time.perf_counter() - start)
        assert info.stats["images"] == n
        assert digest in (None, info.manifest_sha256)  # deterministic
        digest = info.manifest_sha256
        say(f"build {r + 1}/{repeats}: {n} records in {times[-1]:.2f} s "
            f"(manifest {store.size(info.manifest_key) / 1e6:.1f} MB)")
    engine.dispose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    per_run = 96 if args.quick else 320
    small_per_run = 160 if args.quick else 640

    with tempfile.TemporaryDirectory(prefix="e2c-bench-receiver-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        say(f"photos: {PHOTOS.describe()}; making {repeats} x {per_run} prepared photos, "
            f"{repeats} x {small_per_run} small ones and a few large ones")
        big = [prepared_photos(per_run, run) for run in range(repeats)]
        small = [small_photos(small_per_run, run) for run in range(repeats)]
        large = [large_photos(UPLOADERS, run) for run in range(2 if args.quick else repeats)]
        main_case = throughput(work, big, "prepared")
        small_case = throughput(work, small, "small")
        large_case = throughput(work, large, "large")
        builds = build_100k(work, repeats)

    def summary(case: dict, prefix: str = "") -> dict:
        ours, client, direct = (median(case[k]) for k in ("ours", "coreclient", "direct"))
        return {
            f"{prefix}photo_kb": round(case["mean_kb"][0], 1),
            f"{prefix}ours_mb_s": round(ours, 2),
            f"{prefix}direct_mb_s": round(direct, 2),
            f"{prefix}ratio": round(ours / direct, 3),
            f"{prefix}ours_coreclient_mb_s": round(client, 2),
            f"{prefix}ratio_coreclient": round(client / direct, 3),
            f"{prefix}runs": {k: [round(x, 2) for x in case[k]]
                              for k in ("ours", "coreclient", "direct")},
        }

    emit({
        "bench": "receiver",
        "quick": args.quick,
        "uploaders": UPLOADERS,
        **summary(main_case),
        **summary(small_case, "small_"),
        **summary(large_case, "large_"),
        "build_100k_s": round(median(builds), 3),
        "build_100k_s_runs": [round(x, 3) for x in builds],
    }, faces=True)


if __name__ == "__main__":
    main()
