"""The embedding cache: vectors by (photo id, backbone version), kept between runs.

A local folder of append-only shards, one ``.npz`` (ids + float32 matrix) per batch of new
embeddings, under ``<root>/<backbone version>/``.  A restarted core reads the shards back (one
file per training run, not one per photo) and does not recompute anything.  A shard is written
atomically; a torn one is skipped and recomputed.  Nothing here imports PyTorch: the core
builds the cache at start-up (erasure purges it) and the trainer only when a run needs it.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge2core.common.fsutil import write_atomic
from edge2core.common.logging import get_logger

__all__ = ["EmbeddingCache"]

_log = get_logger(__name__)
_SAFE = re.compile(r"^[A-Za-z0-9._+-]{1,120}$")


class EmbeddingCache:
    """Embeddings by (photo id, backbone version) in append-only shards under ``root``: a fast
    update computes only the new photos, and a restarted core none at all."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._loaded: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _dir(self, backbone_version: str) -> Path:
        if not _SAFE.match(backbone_version):
            raise ValueError(f"unsafe backbone version {backbone_version!r}")
        return self.root / backbone_version

    def _index(self, backbone_version: str) -> dict[str, np.ndarray]:
        index = self._loaded.get(backbone_version)
        if index is None:
            index = {}
            folder = self._dir(backbone_version)
            for shard in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        ids, vectors = z["ids"], z["vectors"]
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                    # a torn or foreign file: skip it, its embeddings get recomputed
                    _log.warning("skipping unreadable embedding shard", shard=str(shard), error=str(exc))
                    continue
                for i, vector in zip(ids.tolist(), vectors, strict=True):
                    index[str(i)] = vector
            self._loaded[backbone_version] = index
        return index

    def lookup(self, backbone_version: str, ids: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(found id -> vector, missing ids in order, without duplicates)."""
        with self._lock:
            index = self._index(backbone_version)
            found = {i: index[i] for i in ids if i in index}
        missing = list(dict.fromkeys(i for i in ids if i not in found))
        return found, missing

    def add(self, backbone_version: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not ids:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(list(ids)), vectors=vectors)
        folder = self._dir(backbone_version)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{uuid.uuid4().hex}.npz", [buf.getvalue()])
        with self._lock:
            index = self._index(backbone_version)
            for i, vector in zip(ids, vectors, strict=True):
                index[str(i)] = vector

    def get_or_compute(
        self,
        backbone_version: str,
        ids: Sequence[str],
        compute: Callable[[list[str]], np.ndarray],
    ) -> tuple[np.ndarray, int]:
        """Embeddings for ``ids`` (N, D); ``compute(missing_ids)`` fills the gaps.  Returns
        (matrix, number computed)."""
        found, missing = self.lookup(backbone_version, ids)
        if missing:
            new = compute(missing)
            self.add(backbone_version, missing, new)
            found.update(zip(missing, np.asarray(new, dtype=np.float32), strict=True))
        if not ids:
            return np.zeros((0, 1280), dtype=np.float32), 0
        return np.stack([found[i] for i in ids]).astype(np.float32, copy=False), len(missing)

    def purge(self, ids: Sequence[str]) -> int:
        """Forget these photos' embeddings under every backbone, on disk too (right to
        erasure: derived data goes with the photo). Returns how many vectors were dropped."""
        gone = set(ids)
        dropped = 0
        if not gone or not self.root.is_dir():
            return 0
        with self._lock:
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                dropped += self._purge_folder(folder, gone)
                if (index := self._loaded.get(folder.name)) is not None:
                    for i in gone:
                        index.pop(i, None)
        return dropped

    @staticmethod
    def _purge_folder(folder: Path, gone: set[str]) -> int:
        dropped = 0
        for shard in sorted(folder.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    ids, vectors = z["ids"], z["vectors"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue  # unreadable: never served either (see _index)
            keep = np.array([str(i) not in gone for i in ids.tolist()], dtype=bool)
            if keep.all():
                continue
            dropped += int((~keep).sum())
            if keep.any():
                buf = io.BytesIO()
                np.savez(buf, ids=ids[keep], vectors=vectors[keep])
                write_atomic(shard, [buf.getvalue()])
            else:
                shard.unlink()
        return dropped

    def count(self, backbone_version: str) -> int:
        with self._lock:
            return len(self._index(backbone_version))
