"""Property-based tests of every parser and door (hypothesis): random bytes never get past a
door as anything but a reading or a documented refusal (`fuzz/targets.py` says which), and
the formats we write read back as what was written."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from edge2core.common import envelope
from edge2core.common.errors import Invalid
from edge2core.common.signing import SignatureError, Signer, verify
from edge2core.core.api.tus import parse_count, parse_upload_metadata
from fuzz.targets import POLICY, TARGETS, image

JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
RECORD_FIELDS = {"site": st.text(max_size=70), "device": st.text(max_size=70),
                 "source": st.sampled_from(["kiosk", "shopper", "import", "drone", ""]),
                 "sku": st.none() | st.text(max_size=70), "sha256": st.text("0123456789abcdefA", max_size=65),
                 "size": st.integers(-5, 10**12), "width": st.integers(-5, 10**6),
                 "height": st.integers(-5, 10**6), "captured_at": st.none() | st.text(max_size=30)}


@pytest.mark.parametrize("name", sorted(TARGETS))
@given(data=st.binary(max_size=2048))
def test_any_bytes_are_read_or_refused(name: str, data: bytes) -> None:
    TARGETS[name](data)


@pytest.mark.parametrize("name", ["http_meta", "site_report", "kv_deploy", "kv_catalogue",
                                  "catalogue_import", "model_signature", "dataset_manifest"])
@given(document=JSON)
def test_any_json_is_read_or_refused(name: str, document: Any) -> None:
    TARGETS[name](json.dumps(document).encode())


@given(record=st.fixed_dictionaries({}, optional=RECORD_FIELDS))
def test_photo_records_with_wrong_fields_are_refused_with_a_reason(record: dict) -> None:
    TARGETS["http_meta"](json.dumps(record).encode())
    TARGETS["tus_metadata"](",".join(
        f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in record.items()).encode())


@given(header=st.dictionaries(st.text(max_size=10), JSON, max_size=5), image_bytes=st.binary(max_size=300))
def test_mqtt_envelope_round_trip(header: dict, image_bytes: bytes) -> None:
    decoded = envelope.decode(envelope.encode(image_bytes, header))
    assert decoded.image == image_bytes
    assert decoded.header == json.loads(json.dumps(header))


KEYS = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
               min_size=1, max_size=12)


@given(pairs=st.dictionaries(KEYS, st.text(max_size=40), max_size=6))
def test_tus_upload_metadata_round_trip(pairs: dict[str, str]) -> None:
    value = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())
    assert parse_upload_metadata(value) == pairs


@given(n=st.integers(0, 2**70))
def test_tus_counts_read_back(n: int) -> None:
    assert parse_count(str(n), "Upload-Offset", "offset") == n


@given(value=st.text(max_size=30))
def test_tus_counts_are_decimal_digits_or_refused(value: str) -> None:
    try:
        count = parse_count(value, "Upload-Offset", "offset")
    except Invalid as exc:
        assert exc.code in ("bad_offset", "no_offset")
        return
    assert count == int(value.strip(" \t")) and value.strip(" \t").isascii()


@given(width=st.integers(1, 600), height=st.integers(1, 600),
       fmt=st.sampled_from(["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]),
       mode=st.sampled_from(["RGB", "L", "RGBA", "P", "1", "CMYK", "I;16"]))
def test_real_images_of_any_shape_are_prepared_or_refused(width: int, height: int, fmt: str,
                                                          mode: str) -> None:
    out = io.BytesIO()
    try:
        Image.new(mode, (width, height)).save(out, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write that combination: nothing to send
    image(out.getvalue())


@given(data=st.binary(min_size=1, max_size=4096), cut=st.integers(1, 4096))
def test_truncated_or_trailing_bytes_after_a_jpeg_are_read_or_refused(data: bytes, cut: int) -> None:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, format="JPEG")
    jpeg = out.getvalue()
    image(jpeg[: min(cut, len(jpeg))])
    image(jpeg + data)
    assert POLICY.long_side == 256


SIGNER = Signer.generate()


@given(manifest=st.dictionaries(st.text(max_size=10), JSON, max_size=5), flip=st.integers(0, 63))
def test_signatures_verify_and_any_changed_bit_is_refused(manifest: dict, flip: int) -> None:
    signed = SIGNER.sign(manifest)
    assert verify(json.loads(json.dumps(signed)), SIGNER.public_key) == json.loads(json.dumps(manifest))
    raw = bytearray(base64.b64decode(signed["signature"]))
    raw[flip] ^= 1
    with pytest.raises(SignatureError):
        verify({**signed, "signature": base64.b64encode(bytes(raw)).decode()}, SIGNER.public_key)
