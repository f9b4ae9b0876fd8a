"""Acknowledged means kept (field case 3): the edge lets go of a photo only on proof that the
core stored it, the stored object's key in the core's answer.

The core is the real app on uvicorn, on the embedded backends and on S3 (moto) + PostgreSQL.
Its object store is made to refuse the write that finishes an upload (`RefusingStore`: the
error the backend itself raises when it is full or throttling), or the reply to the last
PATCH is lost on the wire (`ReplyDroppingProxy`). The edge side is the real `CoreClient`
and `Forwarder`. A few tests talk to a small server that answers 2xx without a key, the way a
misbehaving core or proxy could: such an answer must never count as stored.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edge2core.common.events import PhotoForwarded, PhotoRecord
from edge2core.common.objectstore import ObjectStore, S3ObjectStore, image_key
from edge2core.core.api.app import create_core_app
from edge2core.core.service import build_core_services
from edge2core.edge.core_client import CoreClient, TransientUploadError
from edge2core.edge.forwarder import Forwarder
from edge2core.edge.spool import Spool
from tests.integration.test_uploads import TOKENS, Core, record_for
from tests.support.backends import Backend, CoreServer, noisy_jpeg

LARGE = (1024, 768)  # a photo well over the clients' `resumable_above` below


class RefusingStore:
    """The core's object store, refusing the next `times` photo writes with the error its
    backend raises when it cannot take them (local disk full; S3 throttling)."""

    def __init__(self, inner: ObjectStore, times: int = 1) -> None:
        self._inner = inner
        self.refusals_left = times
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def _maybe_refuse(self, key: str) -> None:
        if not key.startswith("images/") or self.refusals_left <= 0:
            return
        self.refusals_left -= 1
        self.refused += 1
        if isinstance(self._inner, S3ObjectStore):
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "SlowDown", "Message": "Reduce your request rate"}}
            raise ClientError(error, "PutObject")
        raise OSError(errno.ENOSPC, "No space left on device")

    def put(self, key: str, data: bytes) -> None:
        self._maybe_refuse(key)
        self._inner.put(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._maybe_refuse(key)
        self._inner.put_file(key, path)


class RefusingCore(Core):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.store = RefusingStore(self.services.receiver.store, times=0)
        self.services.receiver.store = self.store  # type: ignore[assignment]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def has(self, sha256: str) -> bool:
        return self.services.store.exists(image_key(sha256))


@pytest.fixture
def core(backend: Backend, tmp_path: Path) -> Iterator[RefusingCore]:
    services = build_core_services(backend.core_settings(tmp_path / "core", site_tokens=TOKENS))
    with CoreServer(create_core_app(services)) as server:
        core = RefusingCore(services, server, "tok-1")
        yield core
        core.http.close()


def large_photo(seed: int) -> tuple[bytes, PhotoRecord]:
    data = noisy_jpeg(seed, LARGE)
    return data, record_for(data, width=LARGE[0], height=LARGE[1])


def client_for(url: str, **kw: object) -> CoreClient:
    return CoreClient(url, token="tok-1", resumable_above=10_000, **kw)  # type: ignore[arg-type]


# --- the core: an upload that failed to finish stays finishable ------------------------------


def test_a_failed_finish_is_503_and_the_upload_stays_finishable(core: RefusingCore) -> None:
    data, record = large_photo(1)
    core.store.refusals_left = 1
    assert core.create(record).status_code == 201
    failed = core.patch(record.sha256, 0, data)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"] == "store_unavailable"
    assert set(failed.json()) == {"error", "detail"}
    assert "No space" not in failed.text and "SlowDown" not in failed.text  # no internals
    assert ".py" not in failed.text and "/tmp" not in failed.text
    assert "X-E2C-Key" not in failed.headers
    assert core.store.refused == 1 and not core.has(record.sha256) and core.rows() == 0

    # Every way of asking says: all bytes here, nothing stored (no key).
    head = core.head(record.sha256)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert "X-E2C-Key" not in head.headers
    again = core.create(record)
    assert (again.status_code, again.headers["Upload-Offset"]) == (200, str(len(data)))
    assert "X-E2C-Key" not in again.headers

    # A PATCH with an empty body at offset == length finishes it ...
    finished = core.patch(record.sha256, len(data), b"")
    assert finished.status_code == 204, finished.text
    assert finished.headers["X-E2C-Key"] == image_key(record.sha256)
    assert finished.headers["X-E2C-Created"] == "true"
    assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == 1 and core.upload_files() == []
    # ... and finishing it again answers the key again (idempotent).
    repeat = core.patch(record.sha256, len(data), b"")
    assert repeat.status_code == 204
    assert (repeat.headers["X-E2C-Key"], repeat.headers["X-E2C-Created"]) == (
        image_key(record.sha256), "false")
    assert core.head(record.sha256).headers["X-E2C-Key"] == image_key(record.sha256)
    assert core.rows() == 1


def test_a_failed_one_shot_store_is_503_not_500(core: RefusingCore) -> None:
    data = noisy_jpeg(2)
    record = record_for(data)
    core.store.refusals_left = 1
    put = core.http.put(f"/v1/images/{record.sha256}", content=data,
                        headers={"X-E2C-Meta": record.model_dump_json()})
    assert put.status_code == 503
    assert put.json()["error"] == "store_unavailable" and "key" not in put.json()
    assert core.rows() == 0 and not core.has(record.sha256)
    put = core.http.put(f"/v1/images/{record.sha256}", content=data,
                        headers={"X-E2C-Meta": record.model_dump_json()})
    assert (put.status_code, put.json()["key"]) == (201, image_key(record.sha256))


# --- the edge: no key, no success -----------------------------------------------------------


async def test_edge_upload_raises_until_the_core_stored_the_photo(core: RefusingCore) -> None:
    data, record = large_photo(3)
    core.store.refusals_left = 1
    client = client_for(core.url, chunk_bytes=len(data) // 3)
    try:
        with pytest.raises(TransientUploadError):
            await client.upload(record, data)  # the store refused the finishing write
        assert not core.has(record.sha256)
        receipt = await client.upload(record, data)  # finishes the upload, sends nothing again
    finally:
        await client.aclose()
    assert receipt["key"] == image_key(record.sha256)
    assert receipt["created"] is True
    assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == 1 and core.upload_files() == []


async def test_edge_survives_the_reply_to_the_last_byte_being_lost(core: RefusingCore) -> None:
    """The core has every byte (fsync'd) but dies before storing the photo and before it
    answers: the edge sees a reset connection, and the core's HEAD says "complete"."""
    data, record = large_photo(4)
    core.store.refusals_left = 1
    server_error = lambda head: head.startswith(b"HTTP/1.1 5")
    async with ReplyDroppingProxy(core.port, drop=server_error) as proxy:
        client = client_for(proxy.url, chunk_bytes=len(data))
        try:
            receipt = await upload_until_proven(client, record, data)
        finally:
            await client.aclose()
    assert proxy.dropped == 1
    assert receipt["key"] == image_key(record.sha256)
    assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == 1


async def test_edge_learns_the_key_when_only_the_reply_was_lost(core: RefusingCore) -> None:
    data, record = large_photo(5)
    stored = lambda head: b"x-e2c-key" in head.lower()
    async with ReplyDroppingProxy(core.port, drop=stored) as proxy:
        client = client_for(proxy.url, chunk_bytes=len(data))
        try:
            receipt = await client.upload(record, data)  # HEAD after the reset tells the key
        finally:
            await client.aclose()
    assert proxy.dropped == 1
    assert receipt["key"] == image_key(record.sha256)
    assert core.rows() == 1


async def test_a_restarted_core_finishes_what_the_old_one_could_not(
    backend: Backend, tmp_path: Path
) -> None:
    """The core that received every byte goes away before storing the photo; a new core
    process (nothing in memory: the bytes are rehashed from its staging folder) finishes the
    upload on the edge's next try."""
    settings = backend.core_settings(tmp_path / "core", site_tokens=TOKENS)
    data, record = large_photo(7)
    first = build_core_services(settings)
    refusing = RefusingStore(first.receiver.store, times=1)
    first.receiver.store = refusing  # type: ignore[assignment]
    with CoreServer(create_core_app(first)) as server:
        port = server.port
        client = client_for(server.url)
        with pytest.raises(TransientUploadError):
            await client.upload(record, data)
        await client.aclose()
    assert refusing.refused == 1

    second = build_core_services(settings)  # "restarted"
    assert second.uploads.head(record.sha256).offset == len(data)
    with CoreServer(create_core_app(second), port) as server:
        client = client_for(server.url)
        try:
            receipt = await client.upload(record, data)
        finally:
            await client.aclose()
    assert receipt["key"] == image_key(record.sha256) and receipt["created"] is True
    assert second.store.get(image_key(record.sha256)) == data


async def upload_until_proven(client: CoreClient, record: PhotoRecord, data: bytes) -> dict:
    """The forwarder's way: transient failures are retried; a return must carry a key."""
    for _ in range(3):
        try:
            receipt = await client.upload(record, data)
        except TransientUploadError:
            continue
        assert receipt["key"], f"returned without proof of storage: {receipt}"
        return receipt
    raise AssertionError("never stored")


async def test_forwarder_keeps_the_photo_until_the_core_has_it(
    core: RefusingCore, tmp_path: Path
) -> None:
    """End to end, as in the field: the spool forgets a photo only once the core holds it."""
    photos = [large_photo(10 + i) for i in range(3)]
    core.store.refusals_left = 2
    spool = Spool(tmp_path / "spool", 50_000_000)
    for data, record in photos:
        assert spool.put(record, data, priority=1)
    forgotten_too_early: list[str] = []

    async def on_forwarded(event: PhotoForwarded) -> None:  # the spool just let go of it
        if not core.has(event.sha256) or event.key != image_key(event.sha256):
            forgotten_too_early.append(event.sha256)

    client = client_for(core.url)
    forwarder = Forwarder(spool, client, quarantine_dir=tmp_path / "quarantine", concurrency=2,
                          on_forwarded=on_forwarded)
    task = asyncio.create_task(forwarder.run())
    try:
        for _ in range(600):
            if spool.stats().items == 0 or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        spool.close()
    assert core.store.refused == 2
    assert forgotten_too_early == []
    for data, record in photos:
        assert core.services.store.get(image_key(record.sha256)) == data
    assert core.rows() == len(photos)
    assert not (tmp_path / "quarantine").exists()


def test_field_case_3_a_blocked_folder_in_the_local_store(tmp_path: Path) -> None:
    """The field reproduction itself: a file where the store's `images/<aa>/` folder goes."""
    from edge2core.config import CoreSettings

    services = build_core_services(CoreSettings(data_dir=tmp_path / "core"))
    data, record = large_photo(6)
    folder = image_key(record.sha256).rsplit("/", 1)[0]
    blocker = services.store.root / folder  # type: ignore[attr-defined]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")  # images/<aa> is a file: the folder cannot be made
    with CoreServer(create_core_app(services)) as server:

        async def scenario() -> dict:
            client = CoreClient(server.url, resumable_above=10_000)
            try:
                with pytest.raises(TransientUploadError):
                    await client.upload(record, data)
                blocker.unlink()
                return await client.upload(record, data)
            finally:
                await client.aclose()

        receipt = asyncio.run(scenario())
    assert receipt["key"] == image_key(record.sha256)
    assert services.store.get(image_key(record.sha256)) == data


# --- answers that prove nothing ---------------------------------------------------------------


def _unproven_app() -> Starlette:
    """A server that says yes without saying where it put anything."""

    async def put(request: Request) -> Response:
        await request.body()
        mode, sha = request.path_params["mode"], request.path_params["sha"]
        answers: dict[str, Response] = {
            "no-key": JSONResponse({"sha256": sha, "created": True}, status_code=201),
            "empty-key": JSONResponse({"sha256": sha, "key": "", "created": True}),
            "null-key": JSONResponse({"sha256": sha, "key": None}),
            "other-photo": JSONResponse({"sha256": "0" * 64, "key": "images/00/x.jpg"}),
            "not-json": PlainTextResponse("OK", status_code=200),
            "json-list": JSONResponse(["images/x.jpg"]),
            "accepted": JSONResponse({"sha256": sha, "key": "images/x.jpg"}, status_code=202),
            "no-content": Response(status_code=204),
        }
        return answers[mode]

    async def tus_create(request: Request) -> Response:
        length = request.headers["upload-length"]
        return Response(status_code=201, headers={
            "Location": request.url.path, "Upload-Offset": "0", "Upload-Length": length,
            "Tus-Resumable": "1.0.0"})

    async def tus_patch(request: Request) -> Response:
        body = await request.body()
        offset = int(request.headers["upload-offset"]) + len(body)
        return Response(status_code=204, headers={"Upload-Offset": str(offset),
                                                  "Tus-Resumable": "1.0.0"})

    async def tus_head(request: Request) -> Response:
        return Response(status_code=404)

    return Starlette(routes=[
        Route("/{mode}/v1/images/{sha}", put, methods=["PUT"]),
        Route("/v1/uploads/{sha}", tus_create, methods=["POST"]),
        Route("/v1/uploads/{sha}", tus_patch, methods=["PATCH"]),
        Route("/v1/uploads/{sha}", tus_head, methods=["HEAD"]),
    ])


@pytest.fixture
def unproven_server() -> Iterator[CoreServer]:
    with CoreServer(_unproven_app()) as server:
        yield server


@pytest.mark.parametrize("mode", ["no-key", "empty-key", "null-key", "other-photo", "not-json",
                                  "json-list", "accepted", "no-content"])
async def test_one_shot_answer_without_a_key_is_not_proof(
    unproven_server: CoreServer, mode: str
) -> None:
    data = noisy_jpeg(7)
    client = CoreClient(f"{unproven_server.url}/{mode}", resumable_above=len(data) + 1)
    try:
        with pytest.raises(TransientUploadError):
            await client.upload(record_for(data), data)
    finally:
        await client.aclose()


async def test_tus_2xx_without_a_key_is_not_proof(unproven_server: CoreServer) -> None:
    """All bytes acknowledged with 204s and no key, even after the empty finishing PATCH:
    the client raises (retry later) rather than returning or looping."""
    data, record = large_photo(8)
    client = CoreClient(unproven_server.url, resumable_above=10_000, chunk_bytes=len(data) // 2)
    try:
        with pytest.raises(TransientUploadError):
            await asyncio.wait_for(client.upload(record, data), timeout=10)
    finally:
        await client.aclose()


# --- helpers ----------------------------------------------------------------------------------


class ReplyDroppingProxy:
    """A TCP proxy to the core that, once, resets the client's connection instead of passing
    on an answer whose first bytes match `drop` (the request itself went through whole)."""

    def __init__(self, target_port: int, drop: Callable[[bytes], bool]) -> None:
        self.target_port = target_port
        self.drop = drop
        self.dropped = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            try:
                while chunk := await reader.read(65536):
                    up_writer.write(chunk)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        task = asyncio.create_task(upstream())
        try:
            while chunk := await up_reader.read(65536):
                if self.dropped == 0 and self.drop(chunk):
                    self.dropped += 1
                    writer.transport.abort()  # RST: the client never sees this answer
                    up_writer.transport.abort()
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
