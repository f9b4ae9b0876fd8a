"""The edge's HTTP client for the core: uploads, model artefacts, catalogue."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from edge2core.common.events import META_HEADER, ModelPublished, PhotoRecord
from edge2core.common.fsutil import move_durable
from edge2core.common.products import Product


class TransientUploadError(RuntimeError):
    """Worth retrying: the core is down, slow or overloaded."""


class RejectedUpload(RuntimeError):
    """The core refused these bytes for good (e.g. hash mismatch); retrying will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"core refused the upload ({status}): {body}")
        self.status = status


class ArtifactMismatch(RuntimeError):
    pass


class CoreClient:
    def __init__(self, base_url: str, token: str = "", timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def upload(self, record: PhotoRecord, data: bytes) -> dict:
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
        if response.status_code in (408, 425, 429) or response.status_code >= 500:
            raise TransientUploadError(f"core answered {response.status_code}")
        raise RejectedUpload(response.status_code, response.text)

    async def production_model(self) -> ModelPublished | None:
        response = await self._http.get("/v1/models/production")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
        return ModelPublished(
            version=body["version"],
            sha256=body["sha256"],
            size=body["size"],
            classes=body["classes"],
            url_path=f"/v1/models/{body['version']}/artifact",
        )

    async def download_model(self, model: ModelPublished, dest: Path) -> Path:
        """Stream to a temp file, verify the sha256, then move into place."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        digest = hashlib.sha256()
        async with self._http.stream("GET", model.url_path) as response:
            response.raise_for_status()
            with tmp.open("wb") as fh:
                async for chunk in response.aiter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        if digest.hexdigest() != model.sha256:
            tmp.unlink(missing_ok=True)
            raise ArtifactMismatch(
                f"model {model.version} hashes to {digest.hexdigest()}, expected {model.sha256}"
            )
        move_durable(tmp, dest)
        return dest

    async def products(self) -> list[Product]:
        response = await self._http.get("/v1/catalogue/products")
        response.raise_for_status()
        return [Product.model_validate(p) for p in response.json()]
