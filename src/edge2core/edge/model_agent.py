"""The model agent: converge this site to the core's production model, safely.

Learns of new versions from a NATS subject the core publishes on (carried over the leaf node);
on start, on reconnect and on a slow timer it also asks the core directly, so a site that was
offline when a version was announced still converges when the link returns.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client as NatsClient

from edge2core.common.events import MODELS_SUBJECT, ModelPublished
from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.metrics import MODEL_SWAPS
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.inference import ModelLoadError, Recognizer
from edge2core.edge.model_trust import ModelTrust, UntrustedModel

log = get_logger(__name__)


def prune_models(models_dir: Path, live: Path, keep: int) -> list[Path]:
    """Keep the live model and the `keep` newest files, for a quick local rollback."""
    files = sorted(models_dir.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    survivors = {live, *files[:keep]}
    removed = [path for path in files if path not in survivors]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


class ModelAgent:
    def __init__(
        self,
        core: CoreClient,
        recognizer: Recognizer,
        catalogue: CatalogueReplica,
        models_dir: Path,
        *,
        poll_s: float = 60.0,
        keep_versions: int = 3,
        trust: ModelTrust | None = None,
    ) -> None:
        self._core = core
        self._recognizer = recognizer
        self._catalogue = catalogue
        self._dir = models_dir
        self._poll_s = poll_s
        self._keep = keep_versions
        self._trust = trust
        self._nudge = asyncio.Event()
        self._refused: set[str] = set()

    def _artifact(self, model: ModelPublished) -> Path:
        return self._dir / f"{model.version}-{model.sha256[:16]}.onnx"

    def _pointer(self) -> Path:
        return self._dir / "current.json"

    async def load_last_good(self) -> None:
        """Serve the last model this site ran, before the core is even reachable."""
        if not self._pointer().is_file():
            return
        model = ModelPublished.model_validate_json(self._pointer().read_text())
        await self._load(model)

    async def reconcile(self) -> bool:
        """Make the served model match the core's production model; True if it changed."""
        desired = await self._core.production_model()
        current = self._recognizer.model
        if desired is None or (current and current.sha256 == desired.sha256):
            return False
        if desired.sha256 in self._refused or desired.sha256 in self._recognizer.rolled_back:
            return False
        await self._refresh_catalogue()
        path = self._artifact(desired)
        if not path.is_file():
            await self._core.download_model(desired, path)
        if self._trust is not None:
            try:
                await self._trust.check(self._core, desired.version, path.read_bytes())
            except UntrustedModel as exc:
                path.unlink(missing_ok=True)
                self._refused.add(desired.sha256)
                MODEL_SWAPS.labels(outcome="untrusted").inc()
                log.error("model refused; the previous one keeps serving", error=str(exc))
                return False
        return await self._load(desired)

    async def _load(self, model: ModelPublished) -> bool:
        try:
            await asyncio.to_thread(
                self._recognizer.load, self._artifact(model), version=model.version,
                sha256=model.sha256, threshold=model.recognised_threshold,
            )
        except (ModelLoadError, FileNotFoundError) as exc:
            self._refused.add(model.sha256)
            log.error("model refused; the previous one keeps serving", version=model.version,
                      error=str(exc))
            return False
        write_atomic(self._pointer(), [model.model_dump_json().encode()])
        log.info("model live", version=model.version, classes=len(model.classes))
        prune_models(self._dir, live=self._artifact(model), keep=self._keep)
        return True

    async def _refresh_catalogue(self) -> None:
        self._catalogue.replace(await self._core.products())

    async def run(self, client: NatsClient) -> None:
        async def on_announce(msg) -> None:  # noqa: ANN001 - nats-py's Msg
            try:
                log.info("model announced", version=json.loads(msg.data)["version"])
            except (ValueError, KeyError):
                log.warning("malformed model announcement ignored")
            self._nudge.set()

        await client.subscribe(MODELS_SUBJECT, cb=on_announce)
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # the link may be down: keep serving, try again later
                log.warning("model reconcile failed", error=repr(exc))
            self._nudge.clear()
            try:
                await asyncio.wait_for(self._nudge.wait(), self._poll_s)
            except TimeoutError:
                pass
