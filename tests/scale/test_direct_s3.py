"""Photos straight to S3 (core `ingest.direct`, edge `edge.direct_upload`): the real core app on
uvicorn over a real S3-protocol server (moto) and SQLite, the real spool, `Forwarder` and
`CoreClient`; the core is reached through a proxy that counts the bytes sent to it, so "the
bytes did not pass through the core" is measured, not assumed.

moto enforces neither the signed checksum nor the signed length of a presigned PUT, so a
tampered or short object does reach the bucket here: exactly what the core's commit must catch
on stores that do not enforce them either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from edge2core.common.events import PhotoRecord, Source, utcnow
from edge2core.common.objectstore import image_key
from edge2core.config import CoreSettings
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.db.schema import ImageRow, QuarantineRow
from edge2core.core.ingest.direct import INCOMING
from edge2core.core.service import build_core_services
from edge2core.edge.core_client import CoreClient
from edge2core.edge.forwarder import Forwarder
from edge2core.edge.spool import Spool
from tests.support.backends import CoreServer, noisy_jpeg
from tests.support.objectstores import make_s3_store
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until

pytestmark = pytest.mark.scale

SITE = "site-d"
TOKEN = "tok-direct-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class CountingProxy(TcpProxy):
    """A `TcpProxy` that counts the bytes clients send through it and the connections it
    took; with `cut_first_after`, the first connection is dropped once that many bytes went
    up (an upload interrupted mid-body); with `flip_first_at`, the byte at that offset of the
    first connection is flipped on its way (an object damaged in the store)."""

    def __init__(self, target: tuple[str, int], cut_first_after: int | None = None,
                 flip_first_at: int | None = None) -> None:
        super().__init__(target)
        self.sent = 0
        self.connections = 0
        self.cuts = 0
        self._cut_after = cut_first_after
        self._flip_at = flip_first_at
        self._count = threading.Lock()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        upward = dst.getpeername()[:2] == self.target
        if upward:
            with self._count:
                self.connections += 1
                first = self.connections == 1
        carried = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if upward:
                    if first and self._flip_at is not None and carried <= self._flip_at < carried + len(data):
                        at = self._flip_at - carried
                        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
                    carried += len(data)
                    with self._count:
                        self.sent += len(data)
                    if first and self._cut_after is not None and carried > self._cut_after:
                        self.cuts += 1
                        break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Core:
    def __init__(self, services: CoreServices, server: CoreServer, proxy: CountingProxy) -> None:
        self.services = services
        self.server = server
        self.proxy = proxy
        self.url = f"http://127.0.0.1:{proxy.port}"

    def image_count(self) -> int:
        with self.services.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def incoming(self) -> list[str]:
        return list(self.services.store.list(INCOMING))


@contextlib.contextmanager
def running_core(settings: CoreSettings) -> Iterator[Core]:
    services = build_core_services(settings)
    with CoreServer(create_core_app(services)) as server:
        proxy = CountingProxy(("127.0.0.1", server.port)).open()
        try:
            yield Core(services, server, proxy)
        finally:
            proxy.close()


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path) -> dict[str, object]:
    bucket = make_s3_store(s3_endpoint, tmp_path / "s3-staging").bucket
    return {"object_store_url": f"s3://{bucket}/core", "s3_endpoint_url": s3_endpoint,
            "s3_access_key_id": "testing", "s3_secret_access_key": "testing",
            "site_tokens": {SITE: TOKEN}}


@pytest.fixture
def core(s3_settings: dict[str, object], tmp_path: Path) -> Iterator[Core]:
    with running_core(CoreSettings(data_dir=tmp_path / "core", **s3_settings)) as running:
        yield running


def record_for(data: bytes, **kw: object) -> PhotoRecord:
    fields: dict[str, object] = {
        "site": SITE, "device": "kiosk-1", "source": Source.KIOSK, "sku": "SKU-A",
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "width": 640, "height": 480}
    return PhotoRecord(**{**fields, **kw})


def photo(seed: int) -> bytes:
    return noisy_jpeg(seed, (640, 480))


def body(record: PhotoRecord) -> dict[str, object]:
    return {"record": record.model_dump(mode="json")}


async def forward_all(spool: Spool, client: CoreClient, tmp_path: Path) -> None:
    forwarder = Forwarder(spool, client, quarantine_dir=tmp_path / "quarantine", concurrency=3)
    task = asyncio.create_task(forwarder.run())
    try:
        await until(lambda: spool.stats().items == 0, what="the spool to drain", every=0.02,
                    task=task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def spooled(tmp_path: Path, photos: list[bytes]) -> Spool:
    spool = Spool(tmp_path / "spool", 100_000_000)
    for data in photos:
        spool.put(record_for(data), data, priority=1)
    return spool


async def test_forwarded_photos_go_straight_to_s3_and_are_recorded_once(
        core: Core, tmp_path: Path) -> None:
    photos = [photo(i) for i in range(6)]
    spool = spooled(tmp_path, photos)
    client = CoreClient(core.url, TOKEN, direct_uploads=True)
    try:
        await forward_all(spool, client, tmp_path)
        assert core.image_count() == len(photos)
        store = core.services.store
        for data in photos:
            assert store.get(image_key(hashlib.sha256(data).hexdigest())) == data
        assert core.services.direct is not None and core.services.direct.settle()
        assert core.incoming() == []  # each upload was copied in place, then deleted
        # The photos' bytes went to S3, not through the core: only grants and commits did.
        total = sum(len(p) for p in photos)
        assert core.proxy.sent < total / 5, (core.proxy.sent, total)

        again = await client.upload(record_for(photos[0]), photos[0])  # a resend: a replay
    finally:
        await client.aclose()
        spool.close()
    assert again["created"] is False and again["key"] == image_key(again["sha256"])
    assert core.image_count() == len(photos)
    assert not (tmp_path / "quarantine").exists()


def test_a_tampered_short_or_missing_object_is_refused_with_a_stable_reason(core: Core) -> None:
    data = photo(20)
    record = record_for(data)
    http = httpx.Client(base_url=core.url, headers=AUTH)

    def grant() -> dict[str, object]:
        answer = http.post("/v1/photos/uploads/presigned", json=body(record))
        assert answer.status_code == 201, answer.text
        return answer.json()

    def put(content: bytes) -> None:
        g = grant()
        assert httpx.put(str(g["url"]), content=content, headers=g["headers"]).status_code == 200

    def commit() -> httpx.Response:
        return http.post(f"/v1/photos/{record.sha256}/commit", json=body(record))

    try:
        missing = commit()
        assert (missing.status_code, missing.json()["error"]) == (409, "not_uploaded")

        put(data[:-1] + bytes([data[-1] ^ 1]))  # same length, one bit off
        tampered = commit()
        assert (tampered.status_code, tampered.json()["error"]) == (409, "object_hash_mismatch")
        assert core.incoming() == []  # the bad object is gone

        put(data[: len(data) // 2])
        short = commit()
        assert (short.status_code, short.json()["error"]) == (409, "object_size_mismatch")
        assert core.image_count() == 0

        put(data)
        stored = commit()
        assert stored.status_code == 201, stored.text
        assert stored.json() == {"sha256": record.sha256, "key": image_key(record.sha256),
                                 "size": len(data), "created": True, "erased": False}
        replay = http.post("/v1/photos/uploads/presigned", json=body(record))
        assert (replay.status_code, replay.json()["key"]) == (200, image_key(record.sha256))
        assert core.image_count() == 1
    finally:
        http.close()


def test_the_core_runs_its_own_photo_checks_on_a_direct_upload(core: Core) -> None:
    """A photo with EXIF left in it is refused and quarantined as on the one-shot path."""
    image = Image.open(io.BytesIO(photo(30)))
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    data = out.getvalue()
    record = record_for(data)
    with httpx.Client(base_url=core.url, headers=AUTH) as http:
        g = http.post("/v1/photos/uploads/presigned", json=body(record)).json()
        assert httpx.put(g["url"], content=data, headers=g["headers"]).status_code == 200
        refused = http.post(f"/v1/photos/{record.sha256}/commit", json=body(record))
        other_site = http.post(f"/v1/photos/{record.sha256}/commit",
                               json=body(record.model_copy(update={"site": "site-x"})))
    assert (refused.status_code, refused.json()["error"]) == (422, "metadata_present")
    assert other_site.status_code == 401
    assert core.image_count() == 0 and core.incoming() == []
    with core.services.sessions() as session:
        quarantined = session.get(QuarantineRow, record.sha256)
    assert quarantined is not None and quarantined.reason == "metadata_present"


async def test_an_interrupted_put_is_retried_and_an_abandoned_one_expires(
        s3_endpoint: str, s3_settings: dict[str, object], tmp_path: Path) -> None:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    # The sites reach S3 through a link that drops the first upload half-way.
    s3_link = CountingProxy((host, int(port)), cut_first_after=30_000).open()
    settings = CoreSettings(data_dir=tmp_path / "core", **s3_settings,
                            s3_presign_endpoint_url=f"http://127.0.0.1:{s3_link.port}")
    data = photo(40)
    assert len(data) > 60_000
    spool = spooled(tmp_path, [data])
    try:
        with running_core(settings) as core:
            client = CoreClient(core.url, TOKEN, direct_uploads=True)
            try:
                await forward_all(spool, client, tmp_path)
            finally:
                await client.aclose()
            assert s3_link.cuts == 1 and s3_link.connections >= 2
            assert core.image_count() == 1
            assert core.services.store.get(image_key(hashlib.sha256(data).hexdigest())) == data

            # Uploaded, never committed: purged once older than the upload expiry.
            left = photo(41)
            with httpx.Client(base_url=core.url, headers=AUTH) as http:
                g = http.post("/v1/photos/uploads/presigned", json=body(record_for(left))).json()
            assert httpx.put(g["url"], content=left, headers=g["headers"]).status_code == 200
            direct = core.services.direct
            assert direct is not None
            assert direct.settle()  # the committed photo's incoming/ copy is deleted in a batch, off the request
            assert direct.purge_expired() == 0 and core.incoming() == [g["key"]]
            later = utcnow() + timedelta(seconds=settings.upload_expiry_s + 1)
            assert direct.purge_expired(later) == 1 and core.incoming() == []
            assert core.image_count() == 1
    finally:
        spool.close()
        s3_link.close()


async def test_a_core_on_a_local_store_keeps_the_old_path(tmp_path: Path) -> None:
    settings = CoreSettings(data_dir=tmp_path / "core", site_tokens={SITE: TOKEN})
    photos = [photo(50 + i) for i in range(3)]
    with running_core(settings) as core:
        assert core.services.direct is None
        with httpx.Client(base_url=core.url, headers=AUTH) as http:
            declined = http.post("/v1/photos/uploads/presigned", json=body(record_for(photos[0])))
        assert (declined.status_code, declined.json()["error"]) == (409, "direct_unavailable")
        client = CoreClient(core.url, TOKEN, direct_uploads=True)
        try:
            receipts = [await client.upload(record_for(p), p) for p in photos]
            assert client.direct is not None and not client.direct.offered  # asked once
        finally:
            await client.aclose()
        assert [r["key"] for r in receipts] == [image_key(r["sha256"]) for r in receipts]
        assert core.image_count() == len(photos)
        assert core.proxy.sent > sum(len(p) for p in photos)  # the bytes came through the core



async def test_an_object_damaged_in_the_store_is_sent_again(
        s3_endpoint: str, s3_settings: dict[str, object], tmp_path: Path) -> None:
    """The first PUT arrives with one bit flipped (a store that does not enforce the signed
    checksum keeps it): the commit refuses it (`object_hash_mismatch`), and the edge PUTs the
    photo again and commits, without the forwarder ever seeing a failure."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    s3_link = CountingProxy((host, int(port)), flip_first_at=40_000).open()
    settings = CoreSettings(data_dir=tmp_path / "core", **s3_settings,
                            s3_presign_endpoint_url=f"http://127.0.0.1:{s3_link.port}")
    data = photo(60)
    try:
        with running_core(settings) as core:
            client = CoreClient(core.url, TOKEN, direct_uploads=True)
            try:
                receipt = await client.upload(record_for(data), data)
            finally:
                await client.aclose()
            assert s3_link.connections == 2  # the damaged PUT, and the one sent again
            assert receipt["created"] is True and receipt["key"] == image_key(receipt["sha256"])
            assert core.services.store.get(receipt["key"]) == data
            assert core.image_count() == 1
    finally:
        s3_link.close()
