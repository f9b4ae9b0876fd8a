"""Ingest throughput: photos/s through the edge's HTTP door and full preparation pipeline
(validate, decode, orient, quality, resize, face detection + blur, strip, re-encode, fsync'd
spool), against a plain Pillow pipeline doing the same steps with the same face detector
(open, transpose, strip, detect, blur, resize, save), run side by side in the same process.

    .venv/bin/python bench/ingest.py [--quick]

Half the 12-megapixel photos carry a wide-gamut ICC profile (converted to sRGB by ours, as a
phone's Display P3 photo is; plain Pillow ignores it). A third mix, `formats`, is what phones and
cameras also send: HEIC and AVIF, a 16-bit greyscale PNG and a transparent PNG cut-out.

Last stdout line: JSON with ours_photos_per_s, baseline_photos_per_s, ratio (12-megapixel
case) and the same for 348 px photos and for the formats mix, and photo_source (see _common.py: the grocery photos,
$E2C_DATASET or synthetic ones; the faces photo when there is one).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PHOTOS, assert_distinct, emit, median, say, synthetic_photos

from edge2core.common.net import free_port, wait_for_port
from edge2core.edge.api import create_edge_app
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.faces import FaceRedactor, load_default_detector
from edge2core.edge.gateway import Gateway
from edge2core.edge.inference import Recognizer
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy
from edge2core.edge.spool import Spool
from edge2core.sim.profiles import swapped_primaries_profile

WORKERS = 2  # the machine's cores; both pipelines get the same concurrency
LONG_SIDE = 1024
QUALITY = 90


def small_photos(n: int) -> list[bytes]:
    files = PHOTOS.grocery_files()[:: max(1, 2640 // n)][:n]
    if files:
        return [f.read_bytes() for f in files]
    return synthetic_photos(n)


def phone_photo(seed: int) -> bytes:
    """A 4000x3000 JPEG with EXIF, like a phone's: a real photo upscaled, with sensor noise.
    Even seeds start from the faces photo when there is one."""
    base = Image.open(PHOTOS.city) if seed % 2 == 0 and PHOTOS.city is not None \
        else Image.open(io.BytesIO(small_photos(seed + 1)[-1]))
    big = base.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 6, (3000, 4000, 3))
    pixels = np.clip(np.asarray(big, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    icc = {"icc_profile": swapped_primaries_profile("Wide")} if seed % 2 == 0 else {}
    exif[0x0112] = 1
    exif[0x8825] = {1: "N", 2: (59.0, 20.0, 0.0), 3: "E", 4: (18.0, 4.0, 0.0)}
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=92, exif=exif, **icc)
    return out.getvalue()


def format_photos(n: int) -> list[bytes]:
    """HEIC, AVIF, 16-bit greyscale PNG and RGBA cut-out PNG, 2000x1500, distinct."""
    out: list[bytes] = []
    for i in range(n):
        base = Image.open(io.BytesIO(small_photos(i + 1)[-1])).convert("RGB")
        big = base.resize((2000, 1500), Image.Resampling.BICUBIC)
        # a mark of its own: a photo source may hold the same picture twice (the grocery set does)
        big.paste((i % 256, i // 256 % 256, 97), (0, 0, 16, 16))
        buffer = io.BytesIO()
        kind = i % 4
        if kind == 0:
            big.save(buffer, format="HEIF", quality=80)
        elif kind == 1:
            big.save(buffer, format="AVIF", quality=70)
        elif kind == 2:
            grey = (np.asarray(big.convert("L"), dtype=np.uint16) * 257 + i).astype(np.uint16)
            Image.fromarray(grey).save(buffer, format="PNG")
        else:
            rgba = big.convert("RGBA")
            alpha = np.zeros((1500, 2000), dtype=np.uint8)
            alpha[200:1300, 300:1700] = 255
            rgba.putalpha(Image.fromarray(alpha))
            rgba.save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def baseline_pipeline(redactor: FaceRedactor, out_dir: Path):
    """What one would write with Pillow alone: full decode, then the same steps."""
    counter = iter(range(10**9))

    def run(data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image).convert("RGB")  # open, transpose
        image.info.clear()  # strip
        image, _record = redactor(image)  # detect + blur, same detector
        image.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.BICUBIC)  # resize
        image.save(out_dir / f"{next(counter)}.jpg", format="JPEG", quality=QUALITY)  # save

    return run


class EdgeDoor:
    """The real HTTP door and intake, served by uvicorn in this process."""

    def __init__(self, root: Path, redactor: FaceRedactor) -> None:
        self.spool = Spool(root / "spool", 10**11)
        intake = Intake("bench", PreparePolicy(long_side=LONG_SIDE, jpeg_quality=QUALITY,
                                               max_bytes=16 * 1024 * 1024), self.spool,
                        redactor=redactor)
        gateway = Gateway(intake, Recognizer(CatalogueReplica(root / "catalogue.json")))
        app = create_edge_app(gateway, "bench", lambda: {}, 16 * 1024 * 1024)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_port("127.0.0.1", self.port, 20)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self.sent = 0

    def post(self, data: bytes) -> None:
        # Distinct bytes per request so no upload is skipped as a duplicate.
        self.sent += 1
        response = self.client.post(
            "/v1/photos", params={"device": "kiosk-1", "sku": f"SKU-{self.sent % 50:04d}"},
            content=data,
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"edge refused a photo: {response.text}")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.spool.close()


def rate(photos: list[bytes], fn) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(fn, photos))
    return len(photos) / (time.perf_counter() - start)


def compare(name: str, photos: list[bytes], ours, baseline, repeats: int) -> dict:
    ours_rates, base_rates = [], []
    for i in range(repeats):
        # Alternate the order so drift on a noisy machine hits both sides alike.
        for label, fn, sink in (("ours", ours, ours_rates), ("baseline", baseline, base_rates))[
            :: 1 if i % 2 == 0 else -1
        ]:
            sink.append(rate(photos, fn))
            say(f"{name} run {i + 1}/{repeats} {label}: {sink[-1]:.1f} photos/s")
    ours_m, base_m = median(ours_rates), median(base_rates)
    return {"ours_photos_per_s": round(ours_m, 2), "baseline_photos_per_s": round(base_m, 2),
            "ratio": round(ours_m / base_m, 2), "repeats": repeats, "photos": len(photos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    redactor = FaceRedactor(load_default_detector())
    say(f"face detector: {redactor.detector.version}")
    say("making 12-megapixel test photos")
    say(f"photos: {PHOTOS.describe()}")
    phones = [phone_photo(seed) for seed in range(4 if args.quick else 8)]
    assert_distinct(phones, "12 MP photos")
    phones *= 2
    small = small_photos(60 if args.quick else 200)
    assert_distinct(small, "348 px photos")
    say("making HEIC, AVIF, 16-bit and transparent photos")
    formats = format_photos(8 if args.quick else 16)
    assert_distinct(formats, "format photos")
    with tempfile.TemporaryDirectory() as tmp:
        door = EdgeDoor(Path(tmp) / "edge", redactor)
        out = Path(tmp) / "baseline"
        out.mkdir()
        try:
            big = compare("12 MP", phones, door.post, baseline_pipeline(redactor, out), repeats)
            little = compare("348 px", small, door.post, baseline_pipeline(redactor, out), repeats)
            mixed = compare("formats", formats, door.post, baseline_pipeline(redactor, out), repeats)
        finally:
            door.close()
    emit({
        **big,
        "photo_bytes_12mp": int(median([len(p) for p in phones])),
        "small_348px": little,
        "formats": mixed,
        "workers": WORKERS,
        "face_detector": redactor.detector.name,
        "target_ratio": 2.0,
    }, faces=True)


if __name__ == "__main__":
    main()
