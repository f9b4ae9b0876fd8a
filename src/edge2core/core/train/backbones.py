"""Backbone versions and their files in the object store, made once and reused by every run.

Under ``backbones/<version>/``: ``weights.pt`` (a fine-tuned state dict; the ImageNet
backbone comes from its package), ``backbone.onnx`` (``image`` -> ``embedding``, exported
once per version because a torch export takes tens of seconds) and ``backbone-int8.onnx``
(ONNX Runtime static quantisation, calibrated on the photos of the run that first needed
it).  ``backbones/current.json`` names the backbone the fast path starts from; a full run
that registers its model moves it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import ModelProto

from edge2core.common.logging import get_logger
from edge2core.common.objectstore import ObjectStore
from edge2core.core.deliver.registry import ArtifactRef
from edge2core.core.train.backbone import PooledFeatures, load_backbone
from edge2core.core.train.onnx_export import export_backbone_onnx, quantize_backbone_int8

__all__ = ["CURRENT_BACKBONE_KEY", "IMAGENET_BACKBONE", "Backbones"]

log = get_logger(__name__)

IMAGENET_BACKBONE = "efficientnet-lite0-imagenet"
CURRENT_BACKBONE_KEY = "backbones/current.json"
_FILES = {"fp32": "backbone.onnx", "int8": "backbone-int8.onnx"}


class Backbones:
    """Backbone versions: torch weights, fp32 ONNX and INT8 ONNX, cached in the object store.

    One lock guards every lazily made file, so two callers (a training run and the gate
    scoring a model) never export or quantise the same backbone twice."""

    def __init__(self, store: ObjectStore, threads: int = 0) -> None:
        self._store = store
        self._threads = threads
        self._protos: dict[str, ModelProto] = {}
        self._torch: dict[str, PooledFeatures] = {}
        self._lock = threading.RLock()

    def current(self) -> str:
        """The backbone the fast path uses: the last registered full run's, else ImageNet's."""
        if self._store.exists(CURRENT_BACKBONE_KEY):
            return str(json.loads(self._store.get(CURRENT_BACKBONE_KEY))["version"])
        return IMAGENET_BACKBONE

    def set_current(self, version: str) -> None:
        """Make ``version`` the fast path's backbone (a full run that registered its model)."""
        self._store.put(CURRENT_BACKBONE_KEY, json.dumps({"version": version}).encode())

    @staticmethod
    def _key(version: str, name: str) -> str:
        return f"backbones/{version}/{name}"

    def torch(self, version: str) -> PooledFeatures:
        """The torch module of a version; only the last one asked for is kept (17 MB each)."""
        with self._lock:
            if version not in self._torch:
                if self._threads:
                    torch.set_num_threads(self._threads)
                self._torch = {version: self._load_torch(version)}
            return self._torch[version]

    def _load_torch(self, version: str) -> PooledFeatures:
        model = load_backbone()
        if version != IMAGENET_BACKBONE:
            data = self._store.get(self._key(version, "weights.pt"))
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            model.eval()
        return model

    def save_finetuned(self, backbone: PooledFeatures) -> str:
        """Store fine-tuned weights; the version is named by their content, so embeddings
        computed with it never mix with another backbone's in the cache."""
        buf = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
        torch.save(state, buf)
        digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
        version = f"efficientnet-lite0-ft-{digest[:12]}"
        self._store.put(self._key(version, "weights.pt"), buf.getvalue())
        with self._lock:
            self._torch = {version: backbone}
        return version

    def onnx_ref(self, version: str, kind: str = "fp32") -> ArtifactRef:
        """A registry reference to a backbone file (shared by every model on that backbone)."""
        key = self._key(version, _FILES[kind])
        data = self._store.get(key)
        return ArtifactRef(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def onnx(self, version: str) -> bytes:
        """The fp32 backbone ONNX, exported through torch the first time it is needed."""
        key = self._key(version, _FILES["fp32"])
        with self._lock:
            if not self._store.exists(key):
                started = time.perf_counter()
                self._store.put(key, export_backbone_onnx(self.torch(version), version))
                log.info("backbone exported to ONNX", backbone=version,
                         seconds=round(time.perf_counter() - started, 1))
            return self._store.get(key)

    def int8(self, version: str, calibration: Callable[[], np.ndarray]) -> bytes:
        """The INT8 backbone ONNX; ``calibration`` (photos) is only called when it is made."""
        key = self._key(version, _FILES["int8"])
        with self._lock:
            if not self._store.exists(key):
                started = time.perf_counter()
                self._store.put(key, quantize_backbone_int8(self.onnx(version), calibration(), method="static"))
                log.info("backbone quantised to INT8", backbone=version,
                         seconds=round(time.perf_counter() - started, 1))
            return self._store.get(key)

    def proto(self, version: str, kind: str = "fp32") -> ModelProto:
        """The parsed backbone ONNX (kept: composing a model needs it every run)."""
        name = f"{version}:{kind}"
        with self._lock:
            if name not in self._protos:
                self._protos[name] = onnx.load_from_string(self._store.get(self._key(version, _FILES[kind])))
            return self._protos[name]
