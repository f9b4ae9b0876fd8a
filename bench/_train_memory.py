"""Peak memory of one fine-tuning epoch over N photos, for bench/training.py (run in a fresh
process so its peak RSS is the epoch's alone).

Photos are prepared-size (1024x768) JPEGs in a local object store, each distinct (the
grocery photos, or synthetic ones; see _common.py). ``--in-memory`` decodes every photo
before the first step, as the full path did before it streamed them from the store: the
baseline. Prints one JSON line: photos, in_memory, peak_rss_mb, seconds.

    .venv/bin/python bench/_train_memory.py --photos 200 [--in-memory] [--store DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, assert_distinct, synthetic_photos

CLASSES = 8
VAL = 32  # one evaluation batch


def source_photos(n: int) -> list[bytes]:
    """`n` distinct 1024x768 JPEGs, classes taking turns."""
    files = PHOTOS.grocery_files()
    raw = [f.read_bytes() for f in files[: n]] if len(files) >= n else synthetic_photos(n)
    out = []
    for i, data in enumerate(raw):
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((1024, 768))
        image.paste((i % 256, i // 256 % 256, 7), (0, 0, 8, 8))  # distinct, whatever the source
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    assert_distinct(out, "memory photos")
    return out


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (per address space, so it starts again at exec;
    getrusage's ru_maxrss carries the parent's peak across fork and exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB; not Linux


def write_photos(root: Path, n: int) -> None:
    """`n` photos into a local object store at `root` (photos/<i>.jpg), for the runs to read."""
    from edge2core.common.objectstore import LocalObjectStore

    store = LocalObjectStore(root)
    for i, data in enumerate(source_photos(n)):
        store.put(f"photos/{i}.jpg", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, required=True)
    parser.add_argument("--store", type=Path, help="photos written by write_photos (default: made here)")
    parser.add_argument("--in-memory", action="store_true")
    args = parser.parse_args()
    if args.store is None:  # standalone: the photos are made first, in a child of their own
        with tempfile.TemporaryDirectory(prefix="e2c-bench-memory-") as tmp:
            write_photos(Path(tmp), args.photos)
            extra = ["--in-memory"] if args.in_memory else []
            subprocess.run([sys.executable, __file__, "--photos", str(args.photos), "--store", tmp, *extra],
                           check=True)
        return
    print(json.dumps(train_one_epoch(args.store, args.photos, args.in_memory)))


def train_one_epoch(root: Path, n: int, in_memory: bool) -> dict:
    """One epoch over the first `n` photos of the store; this process does nothing else, so
    its peak RSS is the epoch's."""
    from edge2core.common.objectstore import LocalObjectStore
    from edge2core.core.train.backbone import load_backbone
    from edge2core.core.train.embeddings import load_model_image
    from edge2core.core.train.finetune import FineTuneConfig, finetune, to_uint8_tensor
    from edge2core.core.train.stored_photos import StoredPhotos

    store = LocalObjectStore(root)
    keys = [f"photos/{i}.jpg" for i in range(n)]
    labels = np.arange(n) % CLASSES
    train = StoredPhotos(store, keys[VAL:], lambda data: to_uint8_tensor(load_model_image(data)))
    val = StoredPhotos(store, keys[:VAL], load_model_image)
    if in_memory:  # the baseline: every photo decoded before the first step
        train, val = list(train), list(val)  # type: ignore[assignment]
    cfg = FineTuneConfig(epochs=1, batch_size=32, train_size=160, seed=0)
    started = time.perf_counter()
    finetune(load_backbone(), train, labels[VAL:], val, labels[:VAL], [f"C{i}" for i in range(CLASSES)], cfg,
             progress=False)
    return {"photos": n, "in_memory": in_memory, "peak_rss_mb": round(peak_rss_mb(), 1),
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
