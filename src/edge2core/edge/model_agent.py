"""The model agent: converge this site to the model the core wants it to run, safely.

The desired model comes from the core's `e2c-deploy` KV bucket (this site's own key when a
canary targets it, else `fleet`), watched across the leaf link and re-watched whenever the link
returns; an HTTP check every `poll_s` is only a safety net for sites without a leaf link.
Delivery is a delta when it can be: a site holding the version's backbone downloads the head
alone (kilobytes), composes the full file locally and accepts it only if its sha256 is the
registry's. Whatever path a file took, it is verified (sha256, Ed25519 signature, warm-up,
smoke test on the site's golden photos) before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from edge2core.common.events import (
    CATALOGUE_BUCKET,
    DEPLOY_BUCKET,
    FLEET_KEY,
    ModelPublished,
    SiteModelReport,
    site_key,
)
from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger
from edge2core.common.metrics import MODEL_DELIVERY_BYTES, MODEL_SWAPS
from edge2core.common.products import read_products
from edge2core.common.signed_catalogue import TamperedCatalogue, unwrap_unverified
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.core_client import CoreClient
from edge2core.edge.inference import LoadedModel, ModelLoadError, Recognizer
from edge2core.edge.kv_follower import KvFollower, LeafLink, State
from edge2core.edge.model_trust import ModelTrust, UntrustedModel

log = get_logger(__name__)

# Tells the core what this site did with a model version (over the leaf link).
Reporter = Callable[[SiteModelReport], Awaitable[None]]


def _read_refused(path: Path) -> set[str]:
    try:
        return {str(s) for s in json.loads(path.read_text())}
    except FileNotFoundError:
        return set()
    except ValueError:
        log.warning("unreadable list of refused models ignored", path=str(path))
        return set()


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
        site: str = "",
        poll_s: float = 30.0,
        keep_versions: int = 3,
        trust: ModelTrust | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self._core = core
        self._recognizer = recognizer
        self._catalogue = catalogue
        self._dir = models_dir
        self._poll_s = poll_s
        self._keep = keep_versions
        self._trust = trust
        self._site = site
        self._reporter = reporter
        self._nudge = asyncio.Event()
        # Versions refused or rolled back here, kept across restarts: never loaded again.
        self._refused: set[str] = _read_refused(self._refused_path())
        self._desired: ModelPublished | None = None  # from the KV watch
        self._kv_live = False  # the deploy bucket's watch has delivered its state
        self._no_delta: set[str] = set()  # versions whose delta failed: full downloads
        self._said: list[SiteModelReport] = []  # the latest reports, said again on reconnect
        self._reported_generation = 0

    def _artifact(self, model: ModelPublished | LoadedModel) -> Path:
        return self._dir / f"{model.version}-{model.sha256[:16]}.onnx"

    def _pointer(self) -> Path:
        return self._dir / "current.json"

    async def load_last_good(self) -> None:
        """Serve the last model this site ran, before the core is even reachable."""
        if not self._pointer().is_file():
            return
        model = ModelPublished.model_validate_json(self._pointer().read_text())
        if model.sha256 not in self._refused:
            await self._load(model)

    async def reconcile(self) -> bool:
        """Ask the core over HTTP what this site should run, and converge to it."""
        desired = await self._core.desired_model(self._site)
        if desired is not None and not self._kv_live:
            await self._refresh_catalogue()  # no catalogue watch is running either
        return await self.converge(desired)

    async def converge(self, desired: ModelPublished | None) -> bool:
        """Make the served model `desired`; True if it changed."""
        current = self._recognizer.model
        if desired is None or (current and current.sha256 == desired.sha256):
            return False
        if desired.sha256 in self._refused or desired.sha256 in self._recognizer.rolled_back:
            return False
        path = self._artifact(desired)
        if not path.is_file():
            await self._fetch(desired, path)
        if self._trust is not None:
            try:
                # The whole model (megabytes): read it off the event loop.
                data = await asyncio.to_thread(path.read_bytes)
                await self._trust.check(self._core, desired.version, data)
            except UntrustedModel as exc:
                path.unlink(missing_ok=True)
                self._refused.add(desired.sha256)  # trust settings may change: not persisted
                MODEL_SWAPS.labels(outcome="untrusted").inc()
                log.error("model refused; the previous one keeps serving", error=str(exc))
                await self._report(desired, "refused", str(exc))
                return False
        return await self._load(desired)

    # --- delivery ----------------------------------------------------------------------------

    def _backbone_path(self, sha256: str) -> Path:
        return self._dir / "backbones" / f"{sha256}.onnx"

    async def _fetch(self, model: ModelPublished, dest: Path) -> None:
        """The full file at `dest`, verified: composed from backbone + head where possible."""
        if model.head is not None and model.backbone is not None and model.sha256 not in self._no_delta:
            try:
                if await self._fetch_delta(model, dest):
                    return
            except httpx.TransportError:
                raise  # the link: try again later, resuming the delta where it stopped
            except ImportError:
                log.info("the onnx package is not installed: full downloads only")
            except Exception as exc:  # any other trouble with the delta: the full file is the reference
                log.warning("delta delivery failed; downloading the full model", error=repr(exc))
            self._no_delta.add(model.sha256)
        await self._core.download_model(model, dest)
        MODEL_DELIVERY_BYTES.labels(kind="full").inc(model.size)

    async def _fetch_delta(self, model: ModelPublished, dest: Path) -> bool:
        from edge2core.common.onnx_models import compose_onnx

        assert model.head is not None and model.backbone is not None
        backbone = self._backbone_path(model.backbone.sha256)
        if not backbone.is_file():
            await self._core.download(model.backbone.url_path, model.backbone.sha256, backbone)
            MODEL_DELIVERY_BYTES.labels(kind="backbone").inc(model.backbone.size)
        head = dest.with_name(f"{dest.stem}-head.bin")  # its own .part, apart from the full file's
        await self._core.download(model.head.url_path, model.head.sha256, head)
        MODEL_DELIVERY_BYTES.labels(kind="head").inc(model.head.size)
        composed = await asyncio.to_thread(compose_onnx, backbone.read_bytes(), head.read_bytes())
        head.unlink(missing_ok=True)
        if hashlib.sha256(composed).hexdigest() != model.sha256:
            # Another onnx version may serialise differently: not an attack, just no delta.
            log.warning("composed model differs from the registry's; downloading it whole",
                        version=model.version)
            return False
        write_atomic(dest, [composed])
        self._prune_backbones(keep=model.backbone.sha256)
        log.info("model delivered as a delta", version=model.version, head_bytes=model.head.size)
        return True

    def _prune_backbones(self, keep: str) -> None:
        """The live model's backbone and the one before it (a rollback may need it)."""
        files = sorted((self._dir / "backbones").glob("*.onnx"),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for path in files[2:]:
            if path.stem != keep:
                path.unlink(missing_ok=True)

    async def _load(self, model: ModelPublished) -> bool:
        try:
            await asyncio.to_thread(
                self._recognizer.load, self._artifact(model), version=model.version,
                sha256=model.sha256, threshold=model.recognised_threshold,
            )
        except (ModelLoadError, FileNotFoundError) as exc:
            # The file itself failed (load, warm-up, smoke test): never again, even after a
            # restart. A missing file says nothing about the model: refused until restart.
            if isinstance(exc, ModelLoadError):
                self._refuse(model.sha256)
            else:
                self._refused.add(model.sha256)
            log.error("model refused; the previous one keeps serving", version=model.version,
                      error=str(exc))
            await self._report(model, "refused", str(exc))
            return False
        self._point_at(model)
        log.info("model live", version=model.version, classes=len(model.classes))
        prune_models(self._dir, live=self._artifact(model), keep=self._keep)
        await self._report(model, "live")
        return True

    def _point_at(self, model: ModelPublished) -> None:
        write_atomic(self._pointer(), [model.model_dump_json().encode()])

    async def _report(self, model: ModelPublished, state: str, reason: str = "") -> None:
        report = SiteModelReport(site=self._site, version=model.version, sha256=model.sha256,
                                 state=state, reason=reason)
        # Kept, and said again whenever the link to the core comes back: a report published
        # while the link was down is lost, and a canary must hear of a rollback.
        self._said = [r for r in self._said if r.sha256 != model.sha256][-4:] + [report]
        await self._send(report)

    async def _send(self, report: SiteModelReport) -> None:
        if self._reporter is None:
            return
        try:
            await self._reporter(report)
        except Exception as exc:  # the model state is the truth; this is said again later
            log.warning("site report not sent", error=repr(exc))

    async def _repeat_reports(self, link: LeafLink | None) -> None:
        if link is None or link.generation == self._reported_generation:
            return
        self._reported_generation = link.generation
        for report in self._said:
            await self._send(report)

    async def _follow_rollbacks(self) -> None:
        """A live rollback (LiveWatch) swapped models under us: restart on the survivor, say
        so to the core, and never load the rolled-back version again."""
        live = self._recognizer.model
        if live is None or not self._pointer().is_file():
            return
        pointed = ModelPublished.model_validate_json(self._pointer().read_text())
        if (pointed.sha256 == live.sha256 or pointed.sha256 not in self._recognizer.rolled_back
                or pointed.sha256 in self._refused):  # handled already
            return
        await self._report(pointed, "rolled_back", "live watch: confidence fell off or runs failed")
        survivor = self._artifact(live)
        if survivor.is_file():
            self._point_at(ModelPublished(
                version=live.version, sha256=live.sha256, size=survivor.stat().st_size,
                classes=list(live.classes), url_path=f"/v1/models/{live.version}/artifact",
                recognised_threshold=live.threshold))
        self._refuse(pointed.sha256)  # last: handled once the report and the pointer are done

    def _refused_path(self) -> Path:
        return self._dir / "refused.json"

    def _refuse(self, sha256: str) -> None:
        self._refused.add(sha256)
        self._dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._refused_path(), [json.dumps(sorted(self._refused)).encode()])

    async def _refresh_catalogue(self) -> None:
        if self._trust is None:
            self._catalogue.replace(await self._core.products())
            return
        await self._replace_catalogue(await self._core.signed_products())

    async def _replace_catalogue(self, items: list[Any]) -> None:
        """Verified (with a trust): a catalogue with any entry that fails is refused whole and
        the replica keeps what it had."""
        if self._trust is None:
            self._catalogue.replace(read_products([unwrap_unverified(i) for i in items]))
            return
        try:
            products = await self._trust.catalogue(self._core, items)
        except (TamperedCatalogue, UntrustedModel) as exc:
            log.error("catalogue refused: it does not verify; keeping the current one", error=str(exc))
            return
        self._catalogue.replace(products)

    # --- following the core ------------------------------------------------------------------

    async def on_deploy_state(self, state: State) -> None:
        """The `e2c-deploy` bucket changed (or a watch delivered it whole)."""
        self._kv_live = True
        raw = state.get(site_key(self._site)) or state.get(FLEET_KEY)
        if raw is None:
            return
        try:
            desired = ModelPublished.model_validate_json(raw)
        except ValueError:
            log.error("malformed desired model in the deploy bucket; ignored")
            return
        if self._desired is None or desired.sha256 != self._desired.sha256:
            log.info("desired model", version=desired.version,
                     target="canary" if site_key(self._site) in state else "fleet")
        self._desired = desired
        self._nudge.set()

    async def on_catalogue_state(self, state: State) -> None:
        await self._replace_catalogue(list(state.values()))

    def _watch_trusted(self, link: LeafLink | None) -> bool:
        """The KV watch decides while it has spoken and its link is up (or down only briefly);
        after `poll_s` without a link, HTTP stands in again."""
        return self._kv_live and (link is None or link.down_for() < self._poll_s)

    async def run(self, js: object | None = None, link: LeafLink | None = None) -> None:
        """Follow the core's buckets (when `js`, a JetStream context on the core's domain, is
        given) and converge; until a watch has spoken (no leaf link, core not reachable yet)
        ask over HTTP every `poll_s` instead."""
        followers = []
        if js is not None:
            followers = [
                # Only this site's key and the fleet's: the core lets a site read no other.
                asyncio.create_task(KvFollower(js, DEPLOY_BUCKET, self.on_deploy_state, link=link,
                                               keys=(FLEET_KEY, site_key(self._site)) if self._site else ()).run()),
                asyncio.create_task(KvFollower(js, CATALOGUE_BUCKET, self.on_catalogue_state, link=link).run()),
            ]
        last_http = -float("inf")
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    # The HTTP answer only stands in while no watch has spoken: with both, a
                    # stale one could swap models back and forth.
                    if not self._watch_trusted(link) and loop.time() - last_http >= self._poll_s:
                        last_http = loop.time()
                        await self.reconcile()
                    else:
                        await self.converge(self._desired)
                    await self._follow_rollbacks()
                    await self._repeat_reports(link)
                except Exception as exc:  # the link may be down: keep serving, try again
                    log.warning("model reconcile failed", error=repr(exc))
                self._nudge.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), 5.0)
        finally:
            for task in followers:
                task.cancel()
