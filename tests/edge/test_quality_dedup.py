"""Quality gates and near-duplicate suppression at the edge."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from edge2core.common.events import CaptureMeta, Source
from edge2core.common.images import ImageRejected, RejectReason, dhash, hamming
from edge2core.edge.dedup import NearDuplicateWindow
from edge2core.edge.intake import Intake
from edge2core.edge.prepare import PreparePolicy, prepare
from edge2core.edge.quality import QualityAction, QualityPolicy, assess
from edge2core.edge.spool import Spool
from edge2core.sim.synthetic import render_photo


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _photo() -> Image.Image:
    return Image.open(io.BytesIO(render_photo(3, 7))).convert("RGB")


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda im: Image.new("RGB", im.size, (128, 128, 128)), "blank"),
        (lambda im: im.point(lambda v: v // 10), "too_dark"),
        (lambda im: im.point(lambda v: 250 + v // 50), "too_bright"),
        (lambda im: im.filter(ImageFilter.GaussianBlur(4)), "blurry"),
    ],
)
def test_bad_photos_are_flagged_with_the_reason(make, flag: str) -> None:
    report = assess(make(_photo()), QualityPolicy())
    assert report.flags == (flag,)


def test_a_good_photo_raises_no_flag() -> None:
    assert assess(_photo(), QualityPolicy()).flags == ()


def test_real_grocery_photos_pass_the_gates(grocery_dir: Path) -> None:
    files = sorted(grocery_dir.glob("val/*/*/*/*.jpg"))[::10]
    flagged = [f.name for f in files if assess(Image.open(f), QualityPolicy()).flags]
    assert len(flagged) <= len(files) * 0.05, flagged


def test_reject_policy_refuses_and_flag_policy_keeps() -> None:
    dark = _jpeg(_photo().point(lambda v: v // 10))
    with pytest.raises(ImageRejected) as refused:
        prepare(dark, PreparePolicy(quality=QualityPolicy(action=QualityAction.REJECT)))
    assert refused.value.reason is RejectReason.LOW_QUALITY
    assert "too_dark" in refused.value.detail
    kept = prepare(dark, PreparePolicy())
    assert kept.quality is not None and kept.quality.flags == ("too_dark",)
    off = prepare(dark, PreparePolicy(quality=QualityPolicy(action=QualityAction.OFF)))
    assert off.quality is None


def test_perceptual_hash_is_close_for_recompressed_and_far_for_other_products() -> None:
    image = _photo()
    again = Image.open(io.BytesIO(_jpeg(image, quality=60)))
    other = Image.open(io.BytesIO(render_photo(5, 7)))
    assert hamming(dhash(image), dhash(again)) <= 4
    assert hamming(dhash(image), dhash(other)) > 10


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_window_matches_same_device_same_label_within_time_only() -> None:
    clock = Clock()
    window = NearDuplicateWindow(window_s=10, max_distance=4, clock=clock)
    window.remember("kiosk-1", 0b1010, "a" * 64, "SKU-1")
    assert window.match("kiosk-1", 0b1011, "SKU-1") == "a" * 64
    assert window.match("kiosk-2", 0b1011, "SKU-1") is None  # another device
    assert window.match("kiosk-1", 0b1011, "SKU-2") is None  # another product scanned
    assert window.match("kiosk-1", 0b1010 ^ 0xFFFF, "SKU-1") is None  # a different photo
    clock.now += 11
    assert window.match("kiosk-1", 0b1010, "SKU-1") is None  # the window has passed


def test_a_kiosk_firing_ten_times_sends_one_photo(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    intake = Intake("s1", PreparePolicy(), spool, near_duplicates=NearDuplicateWindow(10, 4))
    meta = CaptureMeta(site="s1", device="kiosk-1", source=Source.KIOSK, sku="SKU-3")
    base = _photo()
    receipts = [
        intake.accept(_jpeg(base, quality=70 + i * 2), meta, door="test") for i in range(10)
    ]
    assert spool.stats().items == 1
    assert [r.duplicate for r in receipts] == [False] + [True] * 9
    assert {r.sha256 for r in receipts} == {receipts[0].sha256}
    (item,) = spool.pending(5)
    assert item.record.phash is not None and item.record.quality is not None
