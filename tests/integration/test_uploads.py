"""Resumable uploads (tus 1.0 shape) against the real core app on uvicorn, on the embedded
backends and on S3 + PostgreSQL: cut connections, resumption, hash checks, replays, expiry,
per-site tokens, quarantine; and the edge's CoreClient choosing one-shot or resumable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import struct
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Self

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from edge2core.common.events import PhotoRecord, Source, utcnow
from edge2core.common.objectstore import image_key
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.db.schema import ImageRow, QuarantineRow
from edge2core.core.service import build_core_services
from edge2core.edge.core_client import CoreClient, RejectedUpload
from tests.support.backends import Backend, CoreServer, noisy_jpeg
from tests.support.jpegs import jpeg_bytes

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
TOKENS = {"store-1": "tok-1", "store-2": "tok-2"}


def record_for(data: bytes, **kw: object) -> PhotoRecord:
    fields: dict[str, object] = {
        "site": "store-1", "device": "kiosk-a", "source": Source.KIOSK, "sku": "SKU-A",
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "width": 320,
        "height": 240,
    }
    fields.update(kw)
    return PhotoRecord(**fields)


def upload_metadata(record: PhotoRecord) -> str:
    return "record " + base64.b64encode(record.model_dump_json().encode()).decode()


class Core:
    def __init__(self, services: CoreServices, server: CoreServer, token: str | None) -> None:
        self.services = services
        self.url = server.url
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.url, headers=auth, timeout=10)

    def create(self, record: PhotoRecord, length: int | None = None) -> httpx.Response:
        return self.http.post(f"/v1/uploads/{record.sha256}", headers={
            **TUS, "Upload-Length": str(record.size if length is None else length),
            "Upload-Metadata": upload_metadata(record)})

    def head(self, sha: str) -> httpx.Response:
        return self.http.head(f"/v1/uploads/{sha}", headers=TUS)

    def patch(self, sha: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
        return self.http.patch(f"/v1/uploads/{sha}", content=body, headers={
            **TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **headers})

    def rows(self) -> int:
        with self.services.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(ImageRow)))

    def upload_files(self) -> list[str]:
        """What staging holds: files in its folder, and uploads kept in the object store."""
        uploads = self.services.uploads
        return sorted([*(p.name for p in uploads.dir.iterdir()), *uploads.staging.ids()])


@pytest.fixture
def core(backend: Backend, tmp_path: Path) -> Iterator[Core]:
    services = build_core_services(backend.core_settings(tmp_path / "core", site_tokens=TOKENS))
    with CoreServer(create_core_app(services)) as server:
        core = Core(services, server, "tok-1")
        yield core
        core.http.close()


def cut_mid_body(port: int, path: str, offset: int, total: bytes, send: int) -> None:
    """Send a PATCH declaring all of `total`, but only `send` bytes of it, then reset the
    connection (RST, not a polite close): the way a dropped mobile link looks to the server."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer tok-1\r\nUpload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\n"
        f"Content-Length: {len(total)}\r\n\r\n"
    ).encode()
    sock.sendall(head + total[:send])
    time.sleep(0.3)  # let the server take in what was sent
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_offset(core: Core, sha: str, above: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = core.head(sha)
        if response.status_code == 200 and int(response.headers["Upload-Offset"]) > above:
            return int(response.headers["Upload-Offset"])
        time.sleep(0.05)
    raise TimeoutError("the server never recorded the partial body")


def test_options_advertise_tus(core: Core) -> None:
    response = core.http.options("/v1/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) >= {"creation", "expiration",
                                                                  "termination"}


def test_cut_connection_keeps_what_arrived_and_the_upload_resumes(core: Core) -> None:
    data = noisy_jpeg(1, (800, 600))
    assert len(data) > 100_000
    record = record_for(data, width=800, height=600)
    created = core.create(record)
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "0"
    assert created.headers["Location"] == f"/v1/uploads/{record.sha256}"
    assert "Upload-Expires" in created.headers

    half = len(data) // 2
    cut_mid_body(int(core.url.rsplit(":", 1)[1]), f"/v1/uploads/{record.sha256}", 0, data, half)
    offset = wait_offset(core, record.sha256, 0)
    assert 0 < offset <= half
    assert core.rows() == 0  # nothing is recorded before the whole photo is here

    # The same POST again (a restarted edge) finds the same upload at the same offset.
    again = core.create(record)
    assert (again.status_code, again.headers["Upload-Offset"]) == (200, str(offset))

    done = core.patch(record.sha256, offset, data[offset:])
    assert done.status_code == 204, done.text
    assert done.headers["Upload-Offset"] == str(len(data))
    assert done.headers["X-E2C-Key"] == image_key(record.sha256)
    assert done.headers["X-E2C-Created"] == "true"
    assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == 1
    assert core.upload_files() == []  # the partial upload is gone once stored


def test_offset_mismatch_is_409_with_the_real_offset(core: Core) -> None:
    data = noisy_jpeg(2)
    record = record_for(data)
    core.create(record)
    assert core.patch(record.sha256, 0, data[:1000]).status_code == 204
    wrong = core.patch(record.sha256, 0, data[:1000])
    assert wrong.status_code == 409
    assert wrong.headers["Upload-Offset"] == "1000"
    assert wrong.json()["error"] == "offset_mismatch"
    assert core.head(record.sha256).headers["Upload-Offset"] == "1000"
    assert core.patch(record.sha256, 1000, data[1000:]).status_code == 204
    assert core.services.store.get(image_key(record.sha256)) == data


def test_wrong_hash_is_refused_and_nothing_is_kept(core: Core) -> None:
    data = noisy_jpeg(3)
    other = noisy_jpeg(4)
    claimed = record_for(other, size=len(data))
    assert core.create(claimed).status_code == 201
    refused = core.patch(claimed.sha256, 0, data)
    assert refused.status_code == 422
    assert refused.json()["error"] == "hash_mismatch"
    assert hashlib.sha256(data).hexdigest() in refused.json()["detail"]
    assert core.head(claimed.sha256).status_code == 404
    assert core.rows() == 0
    assert list(core.services.store.list("images/")) == []
    assert core.upload_files() == []


def test_replay_is_idempotent(core: Core) -> None:
    data = noisy_jpeg(5)
    record = record_for(data)
    core.create(record)
    first = core.patch(record.sha256, 0, data)
    assert (first.status_code, first.headers["X-E2C-Created"]) == (204, "true")
    # The edge never saw the 204 and does it all again: create says "complete"...
    again = core.create(record)
    assert again.status_code == 200
    assert again.headers["Upload-Offset"] == again.headers["Upload-Length"] == str(len(data))
    assert again.headers["X-E2C-Created"] == "false"
    # ...and a repeat of the final PATCH is acknowledged too.
    repeat = core.patch(record.sha256, len(data), b"")
    assert repeat.status_code == 204 and repeat.headers["X-E2C-Key"] == image_key(record.sha256)
    head = core.head(record.sha256)
    assert (head.status_code, head.headers["Upload-Offset"]) == (200, str(len(data)))
    # The one-shot path agrees.
    put = core.http.put(f"/v1/images/{record.sha256}", content=data,
                        headers={"X-E2C-Meta": record.model_dump_json()})
    assert (put.status_code, put.json()["created"]) == (200, False)
    assert core.rows() == 1


def test_protocol_errors(core: Core) -> None:
    data = noisy_jpeg(6)
    record = record_for(data)
    no_tus = core.http.post(f"/v1/uploads/{record.sha256}", headers={
        "Upload-Length": str(len(data)), "Upload-Metadata": upload_metadata(record)})
    assert no_tus.status_code == 412 and no_tus.headers["Tus-Version"] == "1.0.0"
    assert core.create(record, length=len(data) + 1).status_code == 422  # length != record
    assert core.http.post(f"/v1/uploads/{record.sha256}", headers={
        **TUS, "Upload-Length": str(len(data))}).status_code == 400  # no record
    assert core.http.post("/v1/uploads/not-a-hash", headers={
        **TUS, "Upload-Length": "10", "Upload-Metadata": upload_metadata(record)}
    ).status_code == 400
    assert core.create(record).status_code == 201
    wrong_type = core.patch(record.sha256, 0, data, **{"Content-Type": "image/jpeg"})
    assert wrong_type.status_code == 415
    too_long = core.patch(record.sha256, 0, data + b"extra")
    assert too_long.status_code == 413
    assert too_long.json()["error"] == "exceeds_length"
    assert core.head(record.sha256).headers["Upload-Offset"] == str(len(data))
    assert core.head("0" * 64).status_code == 404
    unknown = core.patch("0" * 64, 0, b"x")
    assert unknown.status_code == 404


def test_termination_forgets_the_upload(core: Core) -> None:
    data = noisy_jpeg(7)
    record = record_for(data)
    core.create(record)
    core.patch(record.sha256, 0, data[:500])
    assert core.http.delete(f"/v1/uploads/{record.sha256}", headers=TUS).status_code == 204
    assert core.head(record.sha256).status_code == 404
    assert core.upload_files() == []


def test_site_tokens_guard_every_upload_route(core: Core) -> None:
    data = noisy_jpeg(8)
    record = record_for(data)
    anonymous = httpx.Client(base_url=core.url, timeout=10)
    other_site = httpx.Client(base_url=core.url, headers={"Authorization": "Bearer tok-2"})
    headers = {**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": upload_metadata(record)}
    assert anonymous.post(f"/v1/uploads/{record.sha256}", headers=headers).status_code == 401
    assert other_site.post(f"/v1/uploads/{record.sha256}", headers=headers).status_code == 401
    assert core.create(record).status_code == 201
    patch = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    assert other_site.patch(f"/v1/uploads/{record.sha256}", content=data,
                            headers=patch).status_code == 401
    assert other_site.head(f"/v1/uploads/{record.sha256}", headers=TUS).status_code == 401
    assert core.head(record.sha256).headers["Upload-Offset"] == "0"
    anonymous.close()
    other_site.close()


def test_photo_with_metadata_is_refused_and_quarantined_with_its_reason(core: Core) -> None:
    exif = Image.Exif()
    exif[0x0110] = "Phone 9"
    data = jpeg_bytes(size=(320, 240), exif=exif)
    record = record_for(data)
    core.create(record)
    refused = core.patch(record.sha256, 0, data)
    assert (refused.status_code, refused.json()["error"]) == (422, "metadata_present")
    assert core.rows() == 0 and list(core.services.store.list("images/")) == []
    with core.services.sessions() as session:
        row = session.get(QuarantineRow, record.sha256)
    assert (row.reason, row.site, row.device) == ("metadata_present", "store-1", "kiosk-a")
    assert "exif" in row.detail
    refused_put = core.http.put(f"/v1/images/{record.sha256}", content=data,
                                headers={"X-E2C-Meta": record.model_dump_json()})
    assert refused_put.status_code == 422
    with core.services.sessions() as session:
        assert session.get(QuarantineRow, record.sha256).attempts == 2


def test_unfinished_uploads_expire(core: Core) -> None:
    uploads = core.services.uploads
    data = noisy_jpeg(9)
    record = record_for(data)
    core.create(record)
    core.patch(record.sha256, 0, data[:700])
    assert uploads.purge_expired() == 0
    assert uploads.purge_expired(now=utcnow() + timedelta(seconds=uploads.expiry_s + 1)) == 1
    assert core.head(record.sha256).status_code == 404
    assert core.upload_files() == []
    fresh = core.create(record)
    assert (fresh.status_code, fresh.headers["Upload-Offset"]) == (201, "0")


async def test_resume_survives_a_restart_and_a_torn_tail(backend: Backend, tmp_path: Path) -> None:
    """The offset on disk is the fsync'd one: bytes past it (a crash's torn tail) are dropped,
    and a new process (no running hash in memory) rehashes what is there and goes on."""
    settings = backend.core_settings(tmp_path / "core")
    uploads = build_core_services(settings).uploads
    data = noisy_jpeg(10)
    record = record_for(data)
    uploads.create(record, len(data))

    async def body(chunk: bytes):  # type: ignore[no-untyped-def]
        yield chunk

    state = await uploads.append(record.sha256, 0, body(data[:3000]))
    assert state.offset == 3000 and state.done is None
    with (uploads.dir / f"{record.sha256}.part").open("ab") as fh:
        fh.write(b"\0" * 777)  # written but never acknowledged

    restarted = build_core_services(settings)
    assert restarted.uploads.head(record.sha256).offset == 3000
    state = await restarted.uploads.append(record.sha256, 3000, body(data[3000:]))
    assert state.done is not None and state.done.created
    assert restarted.store.get(image_key(record.sha256)) == data


# --- the edge's client ---------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy to the core that resets the connection once, after `cut_after` bytes have
    gone upstream; counts every byte it forwards upstream."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.upstream_bytes = 0
        self.connections = 0
        self.cut = False
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def down() -> None:
            try:
                while chunk := await up_reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        task = asyncio.create_task(down())
        try:
            while chunk := await reader.read(65536):
                if not self.cut and self.upstream_bytes + len(chunk) > self.cut_after:
                    keep = self.cut_after - self.upstream_bytes
                    up_writer.write(chunk[:keep])
                    await up_writer.drain()
                    self.upstream_bytes += keep
                    self.cut = True
                    await asyncio.sleep(0.2)
                    up_writer.transport.abort()
                    writer.transport.abort()
                    return
                up_writer.write(chunk)
                await up_writer.drain()
                self.upstream_bytes += len(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            up_writer.close()
            await asyncio.gather(task, return_exceptions=True)


async def test_client_resumes_from_the_core_offset_after_a_cut(core: Core) -> None:
    data = noisy_jpeg(11, (1024, 768))
    record = record_for(data, width=1024, height=768)
    port = int(core.url.rsplit(":", 1)[1])
    async with CuttingProxy(port, cut_after=int(len(data) * 0.6)) as proxy:
        client = CoreClient(f"http://127.0.0.1:{proxy.port}", token="tok-1",
                            resumable_above=10_000, chunk_bytes=len(data))
        receipt = await client.upload(record, data)
        await client.aclose()
    assert proxy.cut and proxy.connections >= 2
    assert receipt == {"sha256": record.sha256, "key": image_key(record.sha256),
                       "size": len(data), "created": True, "erased": False}
    assert core.services.store.get(image_key(record.sha256)) == data
    # Resumed, not restarted: well under two copies of the photo went upstream.
    assert proxy.upstream_bytes < 1.5 * len(data)


async def test_client_picks_one_shot_or_resumable_and_classifies_refusals(core: Core) -> None:
    small, large = noisy_jpeg(12, (160, 120)), noisy_jpeg(13, (800, 600))
    client = CoreClient(core.url, token="tok-1", resumable_above=20_000, chunk_bytes=16_384)
    assert len(small) < 20_000 < len(large)
    first = await client.upload(record_for(small), small)
    second = await client.upload(record_for(large, width=800, height=600), large)
    assert first["created"] and second["created"]
    assert first["key"] == image_key(hashlib.sha256(small).hexdigest())
    assert second["key"] == image_key(hashlib.sha256(large).hexdigest())
    replay = await client.upload(record_for(large, width=800, height=600), large)
    assert replay["created"] is False and replay["key"] == second["key"]
    with pytest.raises(RejectedUpload) as info:
        await client.upload(record_for(noisy_jpeg(14, (800, 600)), size=len(large)), large)
    assert info.value.status == 422
    await client.aclose()
    assert core.rows() == 2
    assert core.upload_files() == []


def test_one_shot_put_answers_like_the_route(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    """Well-formed PUTs take the fast path (ImagePutFastPath); malformed ones reach the
    FastAPI route: both answer with the same statuses and bodies."""
    from edge2core.core.api import fast_put

    taken: list[str] = []
    original = fast_put.ImagePutFastPath._record

    def spy(self, scope):  # type: ignore[no-untyped-def]
        record = original(self, scope)
        taken.append("fast" if record is not None else "route")
        return record

    monkeypatch.setattr(fast_put.ImagePutFastPath, "_record", spy)
    data = noisy_jpeg(11)
    record = record_for(data)
    url = f"/v1/images/{record.sha256}"
    meta = {"X-E2C-Meta": record.model_dump_json()}
    put = core.http.put(url, content=data, headers=meta)
    assert put.status_code == 201
    assert put.json() == {"sha256": record.sha256, "key": image_key(record.sha256),
                          "size": len(data), "created": True, "erased": False}
    assert core.services.store.get(image_key(record.sha256)) == data
    replay = core.http.put(url, content=data, headers=meta)
    assert (replay.status_code, replay.json()["created"]) == (200, False)
    # Refusals from the receiver: same JSON as the route's exception handler.
    other = noisy_jpeg(12)
    wrong = record_for(other, size=len(data))
    mismatch = core.http.put(f"/v1/images/{wrong.sha256}", content=data,
                             headers={"X-E2C-Meta": wrong.model_dump_json()})
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "hash_mismatch"
    assert taken == ["fast", "fast", "fast"]
    # Malformed requests go to the route and keep its answers.
    missing = core.http.put(url, content=data)
    assert missing.status_code == 422 and isinstance(missing.json()["issues"], list)
    bad = core.http.put(url, content=data, headers={"X-E2C-Meta": "{"})
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_metadata")
    ids = core.http.put(f"/v1/images/{wrong.sha256}", content=data, headers=meta)
    assert (ids.status_code, ids.json()["error"]) == (400, "bad_metadata")
    token = core.http.put(url, content=data, headers={**meta, "Authorization": "Bearer tok-2"})
    assert (token.status_code, token.json()["error"]) == (401, "unauthorized")
    assert taken[3:] == ["route"] * 4
    assert core.rows() == 1


def test_a_site_without_a_token_is_never_admitted() -> None:
    from edge2core.core.api.access import site_token_ok

    tokens = {"store-1": "s3cret"}
    assert site_token_ok({}, "anywhere", None)  # development: no tokens configured
    assert site_token_ok(tokens, "store-1", "Bearer s3cret")
    assert site_token_ok(tokens, None, "Bearer s3cret")  # an upload not known yet
    assert not site_token_ok(tokens, "store-2", "Bearer None")  # no token for store-2
    assert not site_token_ok(tokens, "store-2", "Bearer s3cret")  # another site's token
    assert not site_token_ok(tokens, "store-1", "s3cret")
    assert not site_token_ok(tokens, "store-1", None)


def test_the_admin_token_guards_changes_and_reads(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edge2core.config import CoreSettings
    from edge2core.core.api.access import access_allowed
    from edge2core.core.api.app import create_core_app
    from edge2core.core.service import build_core_services

    sites = {"store-1": "site-secret"}
    admin = "admin-secret-0123456789"
    allowed = lambda method, path, auth: access_allowed(
        method, path, auth, admin_token=admin, site_tokens=sites)
    site, boss = "Bearer site-secret", f"Bearer {admin}"
    photo = "/v1/images/" + "0" * 64
    assert allowed("POST", "/v1/products", boss)
    assert not allowed("POST", "/v1/products", site)  # sites cannot change it
    for path in ("/v1/sites/store-1/model", "/v1/models/3/artifact", "/v1/models/3/signature",
                 "/v1/signing-key", "/v1/catalogue/products"):
        assert allowed("GET", path, site), path  # what an edge reads
    assert not allowed("GET", "/v1/labelling/tasks", site)  # the rest is the admin's
    assert not allowed("GET", "/v1/models/3/compare/2", site)
    assert not allowed("GET", "/v1/models", None)
    assert allowed("PUT", photo, None)  # uploads: the site token, checked by the route
    assert allowed("POST", "/v1/uploads/" + "0" * 64, None)
    assert not allowed("GET", photo, None) and not allowed("GET", photo, site)  # photo bytes
    assert allowed("GET", photo, boss) and allowed("HEAD", photo, site)
    assert not allowed("HEAD", photo, None)
    assert allowed("GET", "/healthz", None)
    assert access_allowed("POST", "/v1/products", None, admin_token=None, site_tokens=sites)
    with pytest.raises(ValueError, match="site_tokens"):
        CoreSettings(data_dir=tmp_path, admin_token=admin)  # sites could not read their model
    with pytest.raises(ValueError):
        CoreSettings(data_dir=tmp_path, admin_token="", site_tokens=sites)  # no empty token

    services = build_core_services(CoreSettings(
        data_dir=tmp_path, admin_token=admin, site_tokens=sites))
    client = TestClient(create_core_app(services))
    product = {"sku": "SKU-1", "name": "Milk", "price": 1.0}
    refused = client.post("/v1/products", json=product)
    assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")
    assert client.post("/v1/products", json=product,
                       headers={"Authorization": "Bearer site-secret"}).status_code == 401
    assert client.post("/v1/products", json=product,
                       headers={"Authorization": boss}).status_code == 201
    listed = client.get("/v1/catalogue/products", headers={"Authorization": site})
    assert [p["sku"] for p in listed.json()] == ["SKU-1"]
    assert client.get("/v1/products", headers={"Authorization": site}).status_code == 401
    assert client.get("/healthz").status_code == 200


# --- no input gets a 500 --------------------------------------------------------------------

_LEAKS = re.compile(r'Traceback|File "|\.py\b|/tmp/|/work/|line \d+')


def assert_refused_cleanly(response: httpx.Response, status: int | None = None) -> None:
    """A 4xx (the one expected, if given) with `{"error", "detail"}` and no internals."""
    request = response.request
    what = f"{request.method} {request.headers} -> {response.status_code} {response.text}"
    assert 400 <= response.status_code < 500, what
    if status is not None:
        assert response.status_code == status, what
    if request.method != "HEAD":
        body = response.json()
        assert set(body) == {"error", "detail"}, what
        assert isinstance(body["error"], str) and isinstance(body["detail"], str), what
        assert not _LEAKS.search(response.text), what


def b64(raw: bytes | str) -> str:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


def test_no_input_gets_a_500(core: Core) -> None:
    data = noisy_jpeg(20)
    record = record_for(data)
    sha = record.sha256
    good_meta = upload_metadata(record)
    deep = "[" * 5000 + "]" * 5000

    def post(
        path: str, length: str | bytes, meta: str | bytes, **extra: str | bytes
    ) -> httpx.Response:
        return core.http.post(path, headers={**TUS, "Upload-Length": length,
                                             "Upload-Metadata": meta, **extra})

    for path in (f"/v1/uploads/{sha}", "/v1/uploads"):
        for length in ("abc", "-5", "+5", "1e3", "12.5", "", "0", "5_000", "9" * 100,
                       "\u0663".encode()):
            assert_refused_cleanly(post(path, length, good_meta), 400)
        for length, status in (("99999999999999999999", 422), (str(len(data) + 1), 422)):
            assert_refused_cleanly(post(path, length, good_meta), status)
        for meta in ("record !!!not-base64", "record " + b64("not json"), "record " + b64("{"),
                     "record " + b64('{"site": "store-1"}'), "record " + b64(b"\xff\xfe\x00"),
                     b"record \xc3\xa4\xc3\xb6", "record " + b64(deep), "record " + b64("[]"),
                     f"{good_meta},{good_meta}", "sha256 " + b64("XYZ"), "filename " + b64("a.jpg"),
                     "sha256 " + b64(sha) + ",site " + b64("store-1") + ",width " + b64("wide"),
                     "sha256 " + b64(sha) + ",top_guesses " + b64("nope"),
                     "sha256 " + b64(sha) + ",top_guesses " + b64(deep),
                     "sha256 " + b64(sha) + ",sku " + b64("K\u00e4se-01"),
                     "record " + b64(record.model_dump_json().replace("store-1", "x" * 80))):
            assert_refused_cleanly(post(path, str(len(data)), meta))
        assert_refused_cleanly(post(path, str(len(data)), "", **{"X-E2C-Meta": "{"}), 400)
        non_ascii = b'{"site": "\xc3\xa4"}'
        assert_refused_cleanly(post(path, str(len(data)), "", **{"X-E2C-Meta": non_ascii}), 400)
        no_tus = core.http.post(path, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5",
                                               "Upload-Metadata": good_meta})
        assert_refused_cleanly(no_tus, 412)
    assert_refused_cleanly(post("/v1/uploads/" + "A" * 64, str(len(data)), good_meta), 400)

    assert core.create(record).status_code == 201
    for offset in ("abc", "-1", "", "+0", "0x10", "9" * 100, "\u0663".encode()):
        assert_refused_cleanly(core.patch(sha, 0, b"x", **{"Upload-Offset": offset}), 400)
    for offset in ("99999999999999999999", str(len(data) + 10), "5"):
        refused = core.patch(sha, 0, b"x", **{"Upload-Offset": offset})
        assert_refused_cleanly(refused, 409)
        assert refused.headers["Upload-Offset"] == "0"
    for content_type in ("", "image/jpeg", "application/octet-stream", "\u00e4".encode()):
        assert_refused_cleanly(core.patch(sha, 0, b"x", **{"Content-Type": content_type}), 415)
    assert_refused_cleanly(core.patch("not-a-sha", 0, b"x"), 400)
    assert_refused_cleanly(core.patch("0" * 64, 0, b"x"), 404)
    assert_refused_cleanly(core.http.delete("/v1/uploads/not-a-sha", headers=TUS), 400)
    assert_refused_cleanly(core.http.delete("/v1/uploads/" + "0" * 64, headers=TUS), 404)
    assert_refused_cleanly(core.head("not-a-sha"), 400)
    # Media types are case-insensitive (RFC 9110), parameters allowed.
    mixed = core.patch(sha, 0, data[:100], **{"Content-Type": "Application/Offset+Octet-Stream"})
    assert (mixed.status_code, mixed.headers["Upload-Offset"]) == (204, "100")
    done = core.patch(sha, 100, data[100:],
                      **{"Content-Type": "APPLICATION/OFFSET+OCTET-STREAM; charset=binary"})
    assert done.status_code == 204 and done.headers["X-E2C-Key"] == image_key(sha)
    assert core.rows() == 1
    other = noisy_jpeg(22)
    assert core.create(record_for(other)).status_code == 201
    assert_refused_cleanly(core.patch(hashlib.sha256(other).hexdigest(), 0, other + b"more"), 413)


def test_a_torn_upload_record_is_no_upload(core: Core) -> None:
    """Metadata that is not what the core wrote (a disk fault, a hand edit) is dropped rather
    than answered with a 500; the upload starts again."""
    data = noisy_jpeg(21)
    record = record_for(data)
    assert core.create(record).status_code == 201
    core.services.uploads.staging.write_state(record.sha256, b"{not json")
    assert core.head(record.sha256).status_code == 404
    assert_refused_cleanly(core.patch(record.sha256, 0, data), 404)
    assert core.create(record).status_code == 201
    assert core.patch(record.sha256, 0, data).status_code == 204
