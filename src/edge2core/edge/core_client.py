"""The edge's HTTP client for the core: uploads, model artefacts, catalogue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import httpx

from edge2core.common.events import (
    META_HEADER,
    ModelPublished,
    PhotoRecord,
)
from edge2core.common.fsutil import move_durable
from edge2core.common.products import Product, read_products


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


def _transient(status: int) -> bool:
    return status in (408, 423, 425, 429) or status >= 500


class CoreClient:
    """Uploads go one-shot (`PUT /v1/images/<sha256>`) up to `resumable_above` bytes; larger
    photos go through the resumable protocol (`/v1/uploads/<sha256>`) in `chunk_bytes` PATCHes,
    continuing from the core's durable offset after a broken connection."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        timeout_s: float = 30.0,
        *,
        resumable_above: int = RESUMABLE_ABOVE,
        chunk_bytes: int = CHUNK_BYTES,
        resume_attempts: int = 5,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            # The forwarder keeps many uploads in flight: keep their connections alive.
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
        )
        self.resumable_above = resumable_above
        self.chunk_bytes = max(1, chunk_bytes)
        self.resume_attempts = resume_attempts

    async def aclose(self) -> None:
        await self._http.aclose()

    async def upload(self, record: PhotoRecord, data: bytes) -> dict:
        """Send one photo; returns the core's receipt once the bytes are durable there.

        Raises `TransientUploadError` (retry later) or `RejectedUpload` (refused for good).
        """
        if len(data) > self.resumable_above:
            return await self.upload_resumable(record, data)
        return await self.upload_once(record, data)

    async def upload_once(self, record: PhotoRecord, data: bytes) -> dict:
        try:
            response = await self._http.put(
                f"/v1/images/{record.sha256}",
                content=data,
                headers={META_HEADER: record.model_dump_json(), "Content-Type": "image/jpeg"},
            )
        except httpx.TransportError as exc:
            raise TransientUploadError(f"core unreachable: {exc!r}") from exc
        if response.status_code in (200, 201):
            return response.json()
        if _transient(response.status_code):
            raise TransientUploadError(f"core answered {response.status_code}")
        raise RejectedUpload(response.status_code, response.text)

    async def upload_resumable(self, record: PhotoRecord, data: bytes) -> dict:
        """tus-style: create (or find) the upload, then PATCH from the core's offset; after a
        broken connection ask the core for its offset (HEAD) and go on from there."""
        url = f"/v1/uploads/{record.sha256}"
        tus = {"Tus-Resumable": TUS_VERSION}
        meta = base64.b64encode(record.model_dump_json().encode()).decode()

        async def create() -> httpx.Response:
            response = await self._http.post(url, headers={
                **tus, "Upload-Length": str(len(data)), "Upload-Metadata": f"record {meta}"})
            self._check(response, (200, 201))
            return response

        async def offset_now() -> httpx.Response:
            response = await self._http.head(url, headers=tus)
            if response.status_code == 404:
                return await create()  # expired or discarded at the core: start again
            self._check(response, (200,))
            return response

        failures = 0
        try:
            last = await create()
            while (offset := int(last.headers["Upload-Offset"])) < len(data):
                end = min(offset + self.chunk_bytes, len(data))
                try:
                    response = await self._http.patch(url, content=data[offset:end], headers={
                        **tus, "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream"})
                except httpx.TransportError:
                    failures += 1
                    if failures > self.resume_attempts:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                    last = await offset_now()
                    continue
                if response.status_code == 204:
                    last, failures = response, 0
                elif response.status_code in (404, 409, 423):  # out of step: ask where we are
                    failures += 1
                    if failures > self.resume_attempts:
                        raise TransientUploadError(f"upload keeps failing ({response.status_code})")
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                    last = await offset_now()
                else:
                    self._check(response, (204,))
            if "X-E2C-Key" not in last.headers:  # resumed onto a finished upload
                last = await self._http.head(url, headers=tus)
                self._check(last, (200,))
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

    async def products(self) -> list[Product]:
        response = await self._http.get("/v1/catalogue/products")
        response.raise_for_status()
        return read_products(response.json())
