"""The edge's HTTP client for the core: uploads, model artefacts, catalogue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from edge2core.common.events import (
    META_HEADER,
    ModelPublished,
    PhotoRecord,
)
from edge2core.common.fsutil import move_durable
from edge2core.common.products import Product, read_products
from edge2core.edge.direct_upload import DirectUploader


class TransientUploadError(RuntimeError):
    """Worth retrying: the core is down, slow or overloaded."""


class RejectedUpload(RuntimeError):
    """The core refused these bytes for good (e.g. hash mismatch); retrying will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"core refused the upload ({status}): {body}")
        self.status = status


class ArtifactMismatch(RuntimeError):
    pass


RESUMABLE_ABOVE = 4 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024
TUS_VERSION = "1.0.0"
KEEPALIVE_S = 60.0  # seconds an idle connection to the core is kept (the core keeps it 75 s)


def _transient(status: int) -> bool:
    """Worth retrying: overload and server faults, and any answer that is not a refusal at all
    (a 2xx or 3xx that was not the expected one proves nothing, so it is never a rejection)."""
    return status < 400 or status in (408, 423, 425, 429) or status >= 500


def _header_json(record: PhotoRecord) -> str:
    """The record as JSON for an HTTP header: ASCII only (non-ASCII text escaped), since a
    header is Latin-1 at best and one odd character in a guess must not stall forwarding."""
    return json.dumps(record.model_dump(mode="json"), ensure_ascii=True, separators=(",", ":"))


def _proven(receipt: dict, record: PhotoRecord) -> dict:
    """`receipt` if it proves the core kept the photo (it names the stored object's key) or
    erased it for good; else the upload is not done, whatever the status said."""
    if receipt.get("sha256", record.sha256) != record.sha256:
        raise TransientUploadError("the core's receipt names another photo")
    if receipt.get("erased") is True:
        return receipt
    key = receipt.get("key")
    if not isinstance(key, str) or not key:
        raise TransientUploadError("the core answered without the stored key: not proof")
    return receipt


def _tus_proof(response: httpx.Response) -> bool:
    """A tus answer that proves storage: the stored key, or the core's word that the photo
    was erased (acknowledged, never to be stored)."""
    return bool(response.headers.get("X-E2C-Key")) or (
        response.headers.get("X-E2C-Erased") == "true"
    )


def _tus_offset(response: httpx.Response, length: int) -> int:
    """The core's Upload-Offset; an answer without a sensible one is a transient fault."""
    value = response.headers.get("Upload-Offset", "")
    if not (value.isascii() and value.isdigit()) or int(value) > length:
        raise TransientUploadError(f"the core answered {response.status_code} without a valid "
                                   f"Upload-Offset ({value[:20]!r})")
    return int(value)


class CoreClient:
    """Uploads go one-shot (`PUT /v1/images/<sha256>`) up to `resumable_above` bytes; larger
    photos go through the resumable protocol (`/v1/uploads/<sha256>`) in `chunk_bytes` PATCHes,
    continuing from the core's durable offset after a broken connection. With `direct_uploads`,
    photos go straight to the core's S3 store where the core offers it (`edge.direct_upload`).

    Either way an upload is done only on proof that the core stored the photo: an answer that
    carries the stored object's key. The forwarder deletes its spooled copy on that alone."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout_s: float = 30.0,
        *,
        resumable_above: int = RESUMABLE_ABOVE,
        chunk_bytes: int = CHUNK_BYTES,
        resume_attempts: int = 5,
        tls: ssl.SSLContext | None = None,
        direct_uploads: bool = False,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            # `tls`: trust the private CA and present the site's certificate (mutual TLS); the
            # context is reloaded in place when the files change. None: the system's CAs.
            verify=tls if tls is not None else True,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            # The forwarder keeps many uploads in flight: keep their connections alive, and
            # between a quiet site's photos too (under the core's keep-alive, `core/service`):
            # httpx's 5 s default made most uploads pay a new mutual-TLS handshake.
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128,
                                keepalive_expiry=KEEPALIVE_S),
        )
        self.tls = tls
        self.resumable_above = resumable_above
        self.chunk_bytes = max(1, chunk_bytes)
        self.resume_attempts = resume_attempts
        # Photos straight to S3 where the core offers it (`edge.direct_upload`): the object
        # store gets a client of its own, without the site's token; the system's CAs.
        self._store_http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
        ) if direct_uploads else None
        self.direct = DirectUploader(self._http, self._store_http, self._check, TransientUploadError,
                                     RejectedUpload) if self._store_http is not None else None

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._store_http is not None:
            await self._store_http.aclose()

    async def upload(self, record: PhotoRecord, data: bytes) -> dict:
        """Send one photo; returns the core's receipt once the bytes are durable there: its
        `key` is the stored object's (empty only with `erased: true`, a photo the core erased
        and will never store).

        Straight to the object store where the core offers it (an S3 store), else through the
        core. Raises `TransientUploadError` (retry later: also for any answer that proves
        nothing) or `RejectedUpload` (refused for good).
        """
        if self.direct is not None and (receipt := await self.direct.upload(record, data)) is not None:
            return _proven(receipt, record)
        if len(data) > self.resumable_above:
            receipt = await self.upload_resumable(record, data)
        else:
            receipt = await self.upload_once(record, data)
        return _proven(receipt, record)

    async def upload_once(self, record: PhotoRecord, data: bytes) -> dict:
        """PUT the photo; only a 200/201 whose JSON names the stored key is a receipt."""
        try:
            response = await self._http.put(
                f"/v1/images/{record.sha256}",
                content=data,
                headers={META_HEADER: _header_json(record), "Content-Type": "image/jpeg"},
            )
        except httpx.TransportError as exc:
            raise TransientUploadError(f"core unreachable: {exc!r}") from exc
        self._check(response, (200, 201))
        try:
            receipt = response.json()
        except ValueError:
            receipt = None
        if not isinstance(receipt, dict):
            raise TransientUploadError(f"core answered {response.status_code} without a receipt")
        return _proven(receipt, record)

    async def upload_resumable(self, record: PhotoRecord, data: bytes) -> dict:
        """tus-style: create (or find) the upload, then PATCH from the core's offset; after a
        broken connection or an out-of-step answer ask the core for its offset (HEAD) and go
        on from there. All bytes there but no stored key (the core failed to store them):
        finish with an empty PATCH at offset == length. A 5xx raises: retried later."""
        try:
            last = await _ResumableUpload(self, record, data).run()
        except httpx.TransportError as exc:
            raise TransientUploadError(f"core unreachable: {exc!r}") from exc
        return {
            "sha256": record.sha256,
            "key": last.headers.get("X-E2C-Key", ""),
            "size": len(data),
            "created": last.headers.get("X-E2C-Created") == "true",
            "erased": last.headers.get("X-E2C-Erased") == "true",
        }

    @staticmethod
    def _check(response: httpx.Response, ok: tuple[int, ...]) -> None:
        if response.status_code in ok:
            return
        if _transient(response.status_code):
            raise TransientUploadError(f"core answered {response.status_code}")
        raise RejectedUpload(response.status_code, response.text)

    async def desired_model(self, site: str) -> ModelPublished | None:
        """What the core wants `site` to run (a canary on it, else production), or None."""
        response = await self._http.get(f"/v1/sites/{site or '-'}/model")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return ModelPublished.model_validate(response.json())

    async def download_model(self, model: ModelPublished, dest: Path) -> Path:
        return await self.download(model.url_path, model.sha256, dest, f"model {model.version}")

    async def download(self, url_path: str, sha256: str, dest: Path, what: str = "artefact") -> Path:
        """Stream to `<dest>.part`, resuming what an earlier attempt left there, verify the
        sha256 of the whole file, then move it into place."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        digest = hashlib.sha256()
        have = part.stat().st_size if part.exists() else 0
        if have:
            with part.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        async with self._http.stream("GET", url_path, headers=headers) as response:
            if have and response.status_code != 206:  # the core sent the whole file again
                digest, have = hashlib.sha256(), 0
            if response.status_code not in (200, 206):
                response.raise_for_status()
            with part.open("ab" if have else "wb") as fh:
                async for chunk in response.aiter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        if digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise ArtifactMismatch(f"{what} hashes to {digest.hexdigest()}, expected {sha256}")
        move_durable(part, dest)
        return dest

    async def signing_key(self) -> str | None:
        """The core's model-signing public key (base64), or None if it signs nothing."""
        response = await self._http.get("/v1/signing-key")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return str(response.json()["public_key"])

    async def model_signature(self, version: int) -> dict | None:
        """The signed manifest of a model version, or None if it is unsigned."""
        response = await self._http.get(f"/v1/models/{version}/signature")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    async def signed_products(self) -> list[Any]:
        """The catalogue's signed documents (`GET /v1/catalogue/signed`); a core that predates
        them answers 404: its plain list then (refused unless unsigned ones are allowed)."""
        response = await self._http.get("/v1/catalogue/signed")
        if response.status_code == 404:
            response = await self._http.get("/v1/catalogue/products")
        response.raise_for_status()
        items = response.json()
        return items if isinstance(items, list) else []

    async def products(self) -> list[Product]:
        response = await self._http.get("/v1/catalogue/products")
        response.raise_for_status()
        return read_products(response.json())


class _ResumableUpload:
    """One photo's way through the core's tus routes, until an answer proves it stored."""

    def __init__(self, client: CoreClient, record: PhotoRecord, data: bytes) -> None:
        self._http = client._http
        self._check = client._check
        self._attempts = client.resume_attempts
        self._chunk = client.chunk_bytes
        self._data = data
        self._length = len(data)
        self._url = f"/v1/uploads/{record.sha256}"
        self._tus = {"Tus-Resumable": TUS_VERSION}
        self._meta = base64.b64encode(record.model_dump_json().encode()).decode()
        self._failures = 0

    async def run(self) -> httpx.Response:
        """The answer that proves storage (stored key, or erased); raises otherwise."""
        last = await self._create()
        while not _tus_proof(last):
            last = await self._next(_tus_offset(last, self._length))
        return last

    async def _next(self, offset: int) -> httpx.Response:
        """PATCH the next chunk from `offset` (none at the end: that PATCH finishes the
        upload); the answer to go on from."""
        end = min(offset + self._chunk, self._length)
        try:
            response = await self._http.patch(self._url, content=self._data[offset:end], headers={
                **self._tus, "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"})
        except httpx.TransportError as exc:
            return await self._out_of_step(repr(exc))
        if response.status_code in (404, 409, 423):  # out of step: ask where we are
            return await self._out_of_step(str(response.status_code))
        self._check(response, (204,))
        if _tus_proof(response):
            return response
        if offset == self._length:
            raise TransientUploadError("the core acknowledged finishing without the stored key")
        if _tus_offset(response, self._length) > offset:
            self._failures = 0
        else:  # acknowledged, but no progress: not forever
            self._fail("the core takes no bytes")
        return response

    async def _create(self) -> httpx.Response:
        response = await self._http.post(self._url, headers={
            **self._tus, "Upload-Length": str(self._length),
            "Upload-Metadata": f"record {self._meta}"})
        self._check(response, (200, 201))
        return response

    async def _offset_now(self) -> httpx.Response:
        response = await self._http.head(self._url, headers=self._tus)
        if response.status_code == 404:
            return await self._create()  # expired or discarded at the core: start again
        self._check(response, (200,))
        return response

    async def _out_of_step(self, why: str) -> httpx.Response:
        self._fail(f"upload keeps failing ({why})")
        await asyncio.sleep(min(2.0, 0.05 * 2**self._failures))
        return await self._offset_now()

    def _fail(self, why: str) -> None:
        self._failures += 1
        if self._failures > self._attempts:
            raise TransientUploadError(why)
