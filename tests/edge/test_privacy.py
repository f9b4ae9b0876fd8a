"""Privacy at the source, end to end through the preparation pipeline: faces blurred, every
metadata block gone, and a record of what was redacted travels with the photo."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from edge2core.common.images import metadata_found
from edge2core.edge.faces import (
    FaceDetectorUnavailable,
    FaceRedactor,
    load_default_detector,
)
from edge2core.edge.prepare import PreparePolicy, prepare
from tests.support.paths import FACES

CITY = FACES / "city.jpg"


@pytest.fixture(scope="module")
def redactor() -> FaceRedactor:
    try:
        return FaceRedactor(load_default_detector())
    except FaceDetectorUnavailable as exc:
        pytest.skip(str(exc))


def _with_gps(path: Path) -> bytes:
    image = Image.open(path)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (59.0, 20.0, 0.0), 3: "E", 4: (18.0, 4.0, 0.0)}  # GPS IFD
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, comment=b"shot at the store entrance")
    return out.getvalue()


def test_faces_blurred_metadata_gone_and_redaction_recorded(redactor: FaceRedactor) -> None:
    if not CITY.is_file():
        pytest.skip(f"{CITY} not found")
    original = _with_gps(CITY)
    assert metadata_found(original)  # the test photo really carries GPS and a comment

    prepared = prepare(original, PreparePolicy(), redactor)

    assert metadata_found(prepared.data) == []
    record = prepared.redaction
    assert record is not None and record["faces"] >= 18
    assert len(record["boxes"]) == record["faces"]
    assert record["detector"] and record["detector_version"]
    output = Image.open(io.BytesIO(prepared.data)).convert("RGB")
    assert len(redactor.detector.detect(output)) <= 1  # nothing recognisable is left


def test_a_photo_without_faces_is_left_as_it_was(redactor: FaceRedactor, grocery_dir: Path) -> None:
    data = (grocery_dir / "train/Fruit/Banana/Banana_001.jpg").read_bytes()
    with_redactor = prepare(data, PreparePolicy(), redactor)
    without = prepare(data, PreparePolicy())
    assert with_redactor.redaction["faces"] == 0
    assert with_redactor.data == without.data
