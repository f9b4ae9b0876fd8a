"""Two real core processes on PostgreSQL + S3 (moto's server) behind a round-robin proxy
(issue 15): uploads, resumable uploads and catalogue writes at the same time, with nothing lost
or doubled; an upload resumed on the other process; one request at a time per upload across
processes; near-duplicate twins grouped as one process would; and the learning loop's lease
moving to the other process when its holder is killed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge2core.common.events import PhotoRecord
from edge2core.common.objectstore import image_key
from edge2core.core.lease import LOOP_LEASE, SCHEDULER_LEASE
from edge2core.edge.core_client import CoreClient
from tests.support.core_cluster import ADMIN_TOKEN, SITE_TOKEN, CoreCluster, core_cluster, photo
from tests.support.waiting import wait_until

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[CoreCluster]:
    """One pair of processes for the tests below (each counts only its own photos)."""
    with core_cluster(tmp_path_factory.mktemp("cluster"), s3_endpoint) as running:
        yield running


def _among(shas: list[str]) -> str:
    return "(" + ", ".join(f"'{sha}'" for sha in shas) + ")"


def _tus_headers(record: PhotoRecord, **more: str) -> dict[str, str]:
    return {**TUS, "Upload-Length": str(record.size), "X-E2C-Meta": record.model_dump_json(),
            **more}


async def _upload_all(cluster: CoreCluster, photos: list[tuple[PhotoRecord, bytes]]) -> list[dict]:
    """Every photo twice at once: one-shot by one client, resumable (the edge's tus client,
    three PATCHes each) by another, both through the proxy."""
    one_shot = CoreClient(cluster.url, SITE_TOKEN, tls=cluster.site_tls())
    resumable = CoreClient(cluster.url, SITE_TOKEN, tls=cluster.site_tls(), resumable_above=0,
                           chunk_bytes=max(1, photos[0][0].size // 3))
    try:
        return list(await asyncio.gather(
            *(one_shot.upload(record, data) for record, data in photos),
            *(resumable.upload(record, data) for record, data in photos)))
    finally:
        await one_shot.aclose()
        await resumable.aclose()


def _write_catalogue(cluster: CoreCluster, count: int) -> list[int]:
    """`count` new products, and each one's twin request at the same time (one of the two
    must be refused as a conflict), from 8 threads through the proxy."""
    statuses: list[int] = []
    lock = threading.Lock()

    def add(index: int) -> None:
        with cluster.client(token=ADMIN_TOKEN) as http:
            answer = http.post("/v1/products", json={"sku": f"SKU-{index % count:03d}",
                                                     "name": f"Product {index}", "price": 1.5})
        with lock:
            statuses.append(answer.status_code)

    def worker(first: int) -> None:
        for index in range(first, 2 * count, 8):
            add(index)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


def test_uploads_resumable_uploads_and_catalogue_writes_at_once(cluster: CoreCluster) -> None:
    photos = [photo(seed) for seed in range(24)]
    statuses: list[int] = []
    writer = threading.Thread(target=lambda: statuses.extend(_write_catalogue(cluster, 20)))
    writer.start()
    receipts = asyncio.run(_upload_all(cluster, photos))
    writer.join(120)

    # Every photo stored once, under its key; each upload has the proof.
    assert [r["key"] for r in receipts] == [image_key(rec.sha256) for rec, _d in photos] * 2
    assert sum(1 for r in receipts if r["created"]) == len(photos)
    mine = _among([rec.sha256 for rec, _d in photos])
    assert cluster.scalar(f"SELECT count(*) FROM images WHERE sha256 IN {mine}") == len(photos)
    assert cluster.scalar(f"SELECT count(*) FROM label_tasks WHERE sha256 IN {mine}") == len(photos)
    stored = set(cluster.store.list("images/"))
    assert {image_key(rec.sha256) for rec, _d in photos} <= stored
    assert cluster.scalar("SELECT count(*) FROM images") == len(stored)  # a row per object
    for record, data in photos[:4]:
        assert cluster.store.get(image_key(record.sha256)) == data
    assert list(cluster.store.list("uploads/staging/")) == []  # every upload finished
    # Each product once; of each pair of requests, one made it and one was a conflict.
    assert sorted(statuses) == [201] * 20 + [409] * 20
    assert cluster.scalar("SELECT count(*) FROM products WHERE sku LIKE 'SKU-%'") == 20
    assert all(count > 0 for count in cluster.proxy.connections)  # both processes served


def test_an_upload_goes_on_at_the_other_process(cluster: CoreCluster) -> None:
    record, data = photo(100)
    half = record.size // 2
    a, b = cluster.client(cluster.direct_url(0)), cluster.client(cluster.direct_url(1))
    with a, b:
        assert a.post(f"/v1/uploads/{record.sha256}", headers=_tus_headers(record)).status_code == 201
        patch = {**TUS, "Content-Type": "application/offset+octet-stream"}
        first = b.patch(f"/v1/uploads/{record.sha256}", content=data[:half],
                        headers={**patch, "Upload-Offset": "0"})
        assert first.status_code == 204 and first.headers["Upload-Offset"] == str(half)
        assert a.head(f"/v1/uploads/{record.sha256}", headers=TUS).headers["Upload-Offset"] == str(half)
        # A create-or-find at the other process finds the upload under way.
        found = b.post(f"/v1/uploads/{record.sha256}", headers=_tus_headers(record))
        assert found.status_code == 200 and found.headers["Upload-Offset"] == str(half)
        last = a.patch(f"/v1/uploads/{record.sha256}", content=data[half:],
                       headers={**patch, "Upload-Offset": str(half)})
        assert last.status_code == 204 and last.headers["X-E2C-Key"] == image_key(record.sha256)
        done = b.head(f"/v1/uploads/{record.sha256}", headers=TUS)
        assert done.headers["X-E2C-Key"] == image_key(record.sha256)
    assert cluster.store.get(image_key(record.sha256)) == data
    assert cluster.scalar(f"SELECT count(*) FROM images WHERE sha256 = '{record.sha256}'") == 1


def test_one_request_at_a_time_per_upload_across_processes(cluster: CoreCluster) -> None:
    record, data = photo(101)
    go_on = threading.Event()
    answers: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield data[:100]
        go_on.wait(30)
        yield data[100:]

    patch = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    with cluster.client(cluster.direct_url(0)) as a, cluster.client(cluster.direct_url(1)) as b:
        assert a.post(f"/v1/uploads/{record.sha256}", headers=_tus_headers(record)).status_code == 201
        sender = threading.Thread(target=lambda: answers.append(
            a.patch(f"/v1/uploads/{record.sha256}", content=slow_body(), headers=patch)))
        sender.start()
        try:
            wait_until(lambda: cluster.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"),
                30, "process 0 holding the upload's lock")
            busy = b.patch(f"/v1/uploads/{record.sha256}", content=data, headers=patch)
            assert busy.status_code == 423 and busy.json()["error"] == "upload_busy"
        finally:
            go_on.set()
            sender.join(30)
    assert answers[0].status_code == 204
    assert answers[0].headers["X-E2C-Key"] == image_key(record.sha256)
    assert cluster.store.get(image_key(record.sha256)) == data


def test_near_duplicate_twins_at_two_processes_share_a_group(cluster: CoreCluster) -> None:
    """Twins (other bytes, the same dHash) sent at the same time, one to each process, end up
    in one group, as with one process; unrelated photos each have their own."""

    async def send() -> None:
        clients = [CoreClient(cluster.direct_url(i), SITE_TOKEN, tls=cluster.site_tls()) for i in (0, 1)]
        try:
            # Both processes have loaded their near-duplicate index before the twins arrive.
            await asyncio.gather(clients[0].upload(*photo(200)), clients[1].upload(*photo(201)))
            await asyncio.gather(*(clients[shift % 2].upload(*photo(300 + seed, shift=shift))
                                   for seed in range(8) for shift in (0, 3)))
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(send())
    mine = _among([photo(seed)[0].sha256 for seed in (200, 201)]
                  + [photo(300 + seed, shift=shift)[0].sha256 for seed in range(8) for shift in (0, 3)])
    assert cluster.scalar(f"SELECT count(*) FROM images WHERE sha256 IN {mine}") == 18
    assert cluster.scalar(f"SELECT count(DISTINCT dup_group) FROM images WHERE sha256 IN {mine}") == 10
    for seed in range(8):
        twins = [photo(300 + seed, shift=shift)[0].sha256 for shift in (0, 3)]
        groups = cluster.scalar(
            f"SELECT count(DISTINCT dup_group) FROM images WHERE sha256 IN {_among(twins)}")
        assert groups == 1


def test_the_loop_moves_to_the_other_process_when_its_holder_dies(
        tmp_path: Path, s3_endpoint: str) -> None:
    # Automation on, with nothing to train: only the lease is at stake here.
    with core_cluster(tmp_path, s3_endpoint, automation={"enabled": True}) as cluster:
        def holders(name: str) -> list[int]:
            return [i for i in (0, 1) if cluster.metric(i, "e2c_lease_held", name=name) == 1]

        wait_until(lambda: len(holders(LOOP_LEASE)) == 1 and len(holders(SCHEDULER_LEASE)) == 1,
                   30, "one holder of each lease")
        holder = holders(LOOP_LEASE)[0]
        other = 1 - holder
        assert str(cluster.procs[holder].proc.pid) in str(
            cluster.scalar(f"SELECT holder FROM leases WHERE name = '{LOOP_LEASE}'"))
        cluster.procs[holder].kill()
        wait_until(lambda: holders(LOOP_LEASE) == [other] and holders(SCHEDULER_LEASE) == [other],
                   30, "the other process taking the leases over")
        assert str(cluster.procs[other].proc.pid) in str(
            cluster.scalar(f"SELECT holder FROM leases WHERE name = '{LOOP_LEASE}'"))
        # The API still answers through the proxy (it skips the dead process).
        with cluster.client(token=ADMIN_TOKEN) as http:
            assert http.get("/v1/automation/decision").status_code == 200
