"""Image intake: format sniffing, limits, damaged data, metadata stripping, orientation, resizing."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib

import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from edge2core.common.images import (
    DecodeLimits,
    ImageRejected,
    RejectReason,
    jpeg_scan_count,
    metadata_found,
    open_checked,
    sha256_hex,
    sniff_format,
)
from edge2core.edge.prepare import PreparePolicy, prepare
from tests.support.jpegs import jpeg_bytes

POLICY = PreparePolicy()

ORIENTATION = 0x0112
GPS_IFD = 0x8825
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="52,22.0N"/>'
    b"</rdf:RDF></x:xmpmeta>"
)


def _encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def _reason(data: bytes, policy: PreparePolicy = POLICY) -> RejectReason:
    with pytest.raises(ImageRejected) as info:
        prepare(data, policy)
    return info.value.reason


def _gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 9"  # Model
    gps = exif.get_ifd(GPS_IFD)
    gps[1] = "N"
    gps[2] = (52.0, 22.0, 1.5)
    gps[3] = "E"
    gps[4] = (4.0, 53.0, 0.0)
    return exif


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, idat: bytes, *, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bilevel_png_bomb(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels: ~50 KB on disk, 400 MP decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return _png(side, side, idat)


# --- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP")])
def test_supported_formats_are_sniffed_from_the_bytes(fmt: str, expected: str) -> None:
    data = _encode(Image.new("RGB", (16, 12), (10, 120, 200)), fmt)
    assert sniff_format(data) == expected
    assert prepare(data, POLICY).source_format == expected


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported(fmt: str) -> None:
    data = _encode(Image.new("RGB", (16, 12), (10, 120, 200)), fmt)
    with pytest.raises(ImageRejected) as info:
        sniff_format(data)
    assert info.value.reason is RejectReason.UNSUPPORTED_FORMAT
    assert _reason(data) is RejectReason.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file\n" * 10,
        random.Random(7).randbytes(4096),
        b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64,  # RIFF, but not WebP
        b"XXXX\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64,  # "WEBP" without the RIFF container
        b"photo.jpg",  # a name is not a format
    ],
    ids=["text", "random", "riff-wave", "webp-without-riff", "file-name"],
)
def test_non_images_are_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageRejected) as info:
        sniff_format(data)
    assert info.value.reason is RejectReason.NOT_AN_IMAGE
    assert _reason(data) is RejectReason.NOT_AN_IMAGE


def test_empty_payload_is_empty() -> None:
    assert _reason(b"") is RejectReason.EMPTY
    with pytest.raises(ImageRejected) as info:
        sniff_format(b"")
    assert info.value.reason is RejectReason.EMPTY
    assert str(info.value).startswith("empty:")


# --- limits --------------------------------------------------------------------------------


def test_byte_limit_is_inclusive_and_checked_before_anything_else() -> None:
    data = jpeg_bytes()
    assert prepare(data, PreparePolicy(max_bytes=len(data))).source_bytes == len(data)
    assert _reason(data, PreparePolicy(max_bytes=len(data) - 1)) is RejectReason.TOO_LARGE
    # Oversized junk is refused for its size before anyone looks at its bytes.
    assert _reason(b"\x00" * 2048, PreparePolicy(max_bytes=1024)) is RejectReason.TOO_LARGE


def test_pixel_limit_is_inclusive() -> None:
    data = jpeg_bytes(size=(10, 10))
    assert prepare(data, PreparePolicy(max_pixels=100)).width == 10
    assert _reason(jpeg_bytes(size=(11, 10)), PreparePolicy(max_pixels=100)) is (
        RejectReason.TOO_MANY_PIXELS
    )


def test_decompression_bomb_is_refused_by_its_declared_size() -> None:
    bomb = _bilevel_png_bomb(20_000)
    assert len(bomb) < 200_000  # tiny on disk...
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (20_000, 20_000)  # ...400 megapixels declared
    with pytest.raises(ImageRejected) as info:
        open_checked(bomb, DecodeLimits())
    assert info.value.reason is RejectReason.TOO_MANY_PIXELS
    assert "20000x20000" in info.value.detail
    assert _reason(bomb) is RejectReason.TOO_MANY_PIXELS


def test_pixel_check_happens_before_any_decoding() -> None:
    # The pixel data is not even valid zlib: had the decoder run, this would be "corrupt".
    bomb = _png(20_000, 20_000, b"not zlib data at all")
    assert _reason(bomb) is RejectReason.TOO_MANY_PIXELS
    # The same damage within the limits is found when decoding.
    assert _reason(_png(8, 8, b"not zlib data at all")) is RejectReason.CORRUPT


def _progressive_with_repeated_scans(extra: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A valid progressive JPEG whose last scan is repeated `extra` times (case 5's shape)."""
    out = io.BytesIO()
    Image.new("RGB", size, (120, 130, 140)).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last_sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[last_sos:eoi] * extra + data[eoi:]


def test_scans_are_counted_without_decoding() -> None:
    assert jpeg_scan_count(jpeg_bytes()) == 1
    plain = _progressive_with_repeated_scans(0)
    assert jpeg_scan_count(plain) == 10  # libjpeg's standard progressive script
    assert jpeg_scan_count(_progressive_with_repeated_scans(500)) == 510


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    """Case 5: 1,000 repeated scans made a 111 KB photo take 16 s to decode."""
    many = _progressive_with_repeated_scans(300)
    assert _reason(many) is RejectReason.TOO_COMPLEX
    assert _reason(many, PreparePolicy()) is RejectReason.TOO_COMPLEX
    assert prepare(_progressive_with_repeated_scans(50), PreparePolicy()).width == 320


@pytest.mark.parametrize("size", [(2000, 1), (1, 2000), (10_000_000, 1), (2100, 100)])
def test_slivers_are_refused_by_their_declared_shape(size: tuple[int, int]) -> None:
    """Case 6: a 10,000,000x1 PNG raised OverflowError (HTTP 500); 2000x1 cost 0.5 GB."""
    sliver = _png(*size, b"never decoded")
    with pytest.raises(ImageRejected) as info:
        open_checked(sliver, DecodeLimits())
    assert info.value.reason is RejectReason.DEGENERATE_SHAPE


def test_a_wide_but_sane_photo_is_kept() -> None:
    assert prepare(jpeg_bytes(size=(2000, 100)), PreparePolicy()).width == 1024


# --- damaged data --------------------------------------------------------------------------


def test_truncated_jpeg_is_corrupt() -> None:
    noisy = Image.frombytes("RGB", (128, 96), random.Random(1).randbytes(128 * 96 * 3))
    data = _encode(noisy, "JPEG", quality=95)
    assert prepare(data, POLICY).width == 128  # the whole file is fine
    assert _reason(data[: len(data) // 2]) is RejectReason.CORRUPT


def test_garbage_after_a_jpeg_header_is_corrupt() -> None:
    jfif = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    junk = random.Random(3).randbytes(2048)
    assert sniff_format(jfif + junk) == "JPEG"
    assert _reason(jfif + junk) is RejectReason.CORRUPT
    assert _reason(b"\xff\xd8\xff" + junk) is RejectReason.CORRUPT


def test_garbage_after_a_png_signature_is_corrupt() -> None:
    assert _reason(b"\x89PNG\r\n\x1a\n" + random.Random(4).randbytes(512)) is RejectReason.CORRUPT


# --- metadata ------------------------------------------------------------------------------


def _jpeg_with_everything() -> bytes:
    return jpeg_bytes(
        size=(64, 48), exif=_gps_exif(), icc_profile=_icc(), comment=b"shot at home", xmp=XMP
    )


def test_metadata_found_detects_each_kind_on_the_original() -> None:
    data = _jpeg_with_everything()
    found = metadata_found(data)
    for key in ("exif", "exif-tags", "icc_profile", "comment", "xmp"):
        assert key in found, found
    with Image.open(io.BytesIO(data)) as image:
        gps = image.getexif().get_ifd(GPS_IFD)
    assert gps[1] == "N" and gps[3] == "E"
    assert tuple(float(v) for v in gps[2]) == (52.0, 22.0, 1.5)


@pytest.mark.parametrize(
    ("save", "detected"),
    [
        (lambda: {"exif": _gps_exif()}, "exif"),
        (lambda: {"icc_profile": _icc()}, "icc_profile"),
        (lambda: {"comment": b"shot at home"}, "comment"),
        (lambda: {"xmp": XMP}, "xmp"),
    ],
    ids=["exif-gps", "icc", "comment", "xmp"],
)
def test_each_kind_of_metadata_is_detected_then_stripped(save, detected: str) -> None:
    data = jpeg_bytes(**save())
    assert detected in metadata_found(data)
    prepared = prepare(data, POLICY)
    assert metadata_found(prepared.data) == []
    with Image.open(io.BytesIO(prepared.data)) as image:
        assert not image.getexif()
        assert not any(image.info.get(k) for k in ("exif", "icc_profile", "comment", "xmp"))


def test_prepare_strips_all_metadata_at_once() -> None:
    prepared = prepare(_jpeg_with_everything(), POLICY)
    assert metadata_found(prepared.data) == []
    with Image.open(io.BytesIO(prepared.data)) as image:
        assert not image.getexif()
        assert not image.getexif().get_ifd(GPS_IFD)
        assert all(marker == "APP0" for marker, _ in image.applist)  # JFIF only
    assert b"shot at home" not in prepared.data
    assert b"GPSLatitude" not in prepared.data


def test_png_text_and_exif_do_not_survive() -> None:
    info = PngInfo()
    info.add_text("comment", "at 52.37N 4.89E")
    info.add_text("Author", "someone")
    data = _encode(Image.new("RGB", (32, 24), (9, 9, 9)), "PNG", pnginfo=info, exif=_gps_exif())
    prepared = prepare(data, POLICY)
    assert metadata_found(prepared.data) == []
    assert b"52.37N" not in prepared.data
    assert b"someone" not in prepared.data


# --- orientation, resizing, encoding -------------------------------------------------------


def test_exif_orientation_is_applied_and_then_dropped() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # display rotated 90 degrees clockwise
    prepared = prepare(_encode(image, "JPEG", exif=exif, quality=95), POLICY)
    assert (prepared.width, prepared.height) == (20, 40)
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.size == (20, 40)
        assert not out.getexif()  # no Orientation left to be applied a second time
        top, bottom = out.getpixel((10, 8)), out.getpixel((10, 32))
    # Rotating clockwise brings the left edge to the top.
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((2000, 1000), 1024, (1024, 512)),
        ((600, 1800), 900, (300, 900)),
        ((1000, 333), 512, (512, 170)),
        ((300, 200), 1024, (300, 200)),  # never upscaled
        ((1024, 700), 1024, (1024, 700)),  # already the target size
    ],
)
def test_resize_to_long_side_keeps_aspect_and_never_upscales(
    size: tuple[int, int], long_side: int, expected: tuple[int, int]
) -> None:
    data = _encode(Image.new("RGB", size, (40, 160, 90)), "PNG")
    prepared = prepare(data, PreparePolicy(long_side=long_side))
    assert (prepared.width, prepared.height) == expected
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.size == expected
        assert out.format == "JPEG"
    w, h = size
    scale = min(1.0, long_side / max(w, h))
    assert abs(prepared.width - w * scale) <= 0.5 and abs(prepared.height - h * scale) <= 0.5


def test_output_is_jpeg_and_sha256_matches_its_bytes() -> None:
    rgba = Image.new("RGBA", (50, 40), (255, 0, 0, 128))
    prepared = prepare(_encode(rgba, "PNG"), POLICY)
    assert sniff_format(prepared.data) == "JPEG"
    assert prepared.source_format == "PNG"
    assert prepared.sha256 == sha256_hex(prepared.data)
    assert len(prepared.sha256) == 64
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.mode == "RGB"


def test_prepare_is_deterministic() -> None:
    noisy = Image.frombytes("RGB", (300, 200), os.urandom(300 * 200 * 3))
    data = _encode(noisy, "JPEG", exif=_gps_exif())
    first, second = prepare(data, POLICY), prepare(data, POLICY)
    assert first.data == second.data
    assert first.sha256 == second.sha256
    # Different pixels, different id.
    other = prepare(_encode(noisy.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG"), POLICY)
    assert other.sha256 != first.sha256


def test_twelve_megapixel_photo_prepares_to_long_side_1024() -> None:
    photo = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    data = _encode(photo, "JPEG", quality=85)
    prepared = prepare(data, PreparePolicy(long_side=1024))
    assert (prepared.width, prepared.height) == (1024, 768)
    assert prepared.source_bytes == len(data)
    assert len(prepared.data) < len(data)
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.size == (1024, 768)
