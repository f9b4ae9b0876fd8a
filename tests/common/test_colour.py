"""One decoding path, pixel by pixel: capture (prepare), recognition and training all see the
same 8-bit sRGB pixels for every mode, profile, bit depth and transparency."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge2core.common.images import (
    SUPPORTED_FORMATS,
    DecodeLimits,
    ImageRejected,
    RejectReason,
    decode_rgb,
    open_checked,
)
from edge2core.edge.prepare import PreparePolicy, prepare
from tests.support.image_corpus import Case, cases
from tests.support.paths import CASES


def _decoded(data: bytes) -> np.ndarray:
    image, _fmt = open_checked(data, DecodeLimits())
    with image:
        return np.asarray(decode_rgb(image))


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_decoded_pixels_are_the_known_answer(case: Case) -> None:
    pixels = _decoded(case.data)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    for (x, y), want in case.expected.items():
        got = pixels[y, x].astype(int)
        assert np.abs(got - np.array(want)).max() <= case.tolerance, (case.name, (x, y), got, want)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_capture_keeps_those_pixels_and_no_metadata(case: Case) -> None:
    photo = prepare(case.data, PreparePolicy(jpeg_quality=100))
    with Image.open(io.BytesIO(photo.data)) as image:
        assert "icc_profile" not in image.info and not image.getexif()
        pixels = np.asarray(image.convert("RGB")).astype(int)
    for (x, y), want in case.expected.items():  # JPEG at q100 moves a flat colour by a few
        assert np.abs(pixels[y, x] - np.array(want)).max() <= case.tolerance + 6, case.name


def test_phone_formats_are_decoded() -> None:
    assert {"HEIF", "AVIF"} <= SUPPORTED_FORMATS
    image = Image.new("RGB", (64, 48), (20, 140, 220))
    out = io.BytesIO()
    image.save(out, "AVIF", quality=90)
    pixels = _decoded(out.getvalue())
    assert np.abs(pixels[20, 20].astype(int) - [20, 140, 220]).max() <= 8


@pytest.mark.parametrize("name", ["R1-300x200.heic", "R1-300x200.avif", "7-gray16-gradient.png",
                                  "8-png-bad-exif.png", "12-rgba-transparent.png",
                                  "13-icc-prophoto.jpg"])
def test_field_cases_are_accepted(name: str) -> None:
    path = CASES / name
    if not path.exists():
        pytest.skip("../shared/cases is not on this machine; the corpus above covers the kinds")
    photo = prepare(path.read_bytes(), PreparePolicy())
    assert photo.width == 300 or photo.width == 400


def test_unsupported_image_formats_name_the_supported_ones() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    with pytest.raises(ImageRejected) as info:
        prepare(out.getvalue(), PreparePolicy())
    assert info.value.reason is RejectReason.UNSUPPORTED_FORMAT
    assert "HEIF" in info.value.detail and "JPEG" in info.value.detail


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_recognition_and_training_see_the_same_pixels_as_capture(
    case: Case, tmp_path: Path
) -> None:
    """One decoding path: the recogniser's tensor and the training loader's tensor of the raw
    bytes are the same numbers (both decode via `images.decode_rgb`)."""
    from edge2core.core.train.embeddings import preprocess_bytes
    from edge2core.edge.catalogue_replica import CatalogueReplica
    from edge2core.edge.inference import Recognizer

    recogniser = Recognizer(CatalogueReplica(tmp_path / "catalogue.json"))
    at_edge = recogniser.tensor(case.data)
    in_training = preprocess_bytes([case.data])
    assert at_edge.shape == in_training.shape
    assert np.allclose(at_edge, in_training, atol=1e-5), case.name


def test_a_large_photo_with_a_profile_is_converted_after_shrinking_with_the_same_colours() -> None:
    """Capture shrinks before the ICC transform (cheaper on 12 MP); the colours still come out
    converted: a swapped-primaries photo of (200, 60, 20) is stored as (60, 200, 20)."""
    from edge2core.sim.profiles import swapped_primaries_profile

    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), (200, 60, 20)).save(
        out, "JPEG", quality=95, icc_profile=swapped_primaries_profile())
    photo = prepare(out.getvalue(), PreparePolicy())
    assert (photo.width, photo.height) == (1024, 683)
    with Image.open(io.BytesIO(photo.data)) as image:
        pixel = np.asarray(image.convert("RGB"))[300, 500].astype(int)
    assert np.abs(pixel - [60, 200, 20]).max() <= 6
