"""Image bytes: sniffing, safe decoding with limits, clean re-encoding, content ids.

Everything here works on bytes in memory and raises `ImageRejected` with a stable reason code,
so every door (MQTT, HTTP, the core's receiver) answers bad input the same way.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, UnidentifiedImageError, features

from edge2core.common.colour import orientation, to_srgb8

# Pillow's own bomb guard only warns below 2x this; we check pixel counts ourselves first.
Image.MAX_IMAGE_PIXELS = None


class RejectReason(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    CORRUPT = "corrupt"
    METADATA_PRESENT = "metadata_present"
    LOW_QUALITY = "low_quality"
    # A photo whose decoding would cost far more than its size says (e.g. a progressive JPEG
    # with a thousand repeated scans: 111 KB, 16 s to decode).
    TOO_COMPLEX = "too_complex"
    # A sliver (2000x1, 10,000,000x1): no product photo, and a resize of it explodes.
    DEGENERATE_SHAPE = "degenerate_shape"


class ImageRejected(ValueError):
    """A photo that cannot be accepted; `reason` is a stable code for metrics and clients."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),
)
# ISO base media files (HEIF, AVIF) name their kind by the `ftyp` box's major brand.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_OTHER_IMAGE_MAGIC = (b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  ")


def _heif_available() -> bool:
    """HEIC, what iPhones save by default, comes from pillow-heif (part of the edge install)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


SUPPORTED_FORMATS = frozenset(
    {"JPEG", "PNG", "WEBP"}
    | ({"AVIF"} if features.check("avif") else set())
    | ({"HEIF"} if _heif_available() else set())
)


def _iso_bmff_format(data: bytes) -> str | None:
    if data[4:8] != b"ftyp":
        return None
    brand = data[8:12]
    return "AVIF" if brand in _AVIF_BRANDS else "HEIF" if brand in _HEIF_BRANDS else None


def _unsupported(what: str) -> ImageRejected:
    return ImageRejected(
        RejectReason.UNSUPPORTED_FORMAT,
        f"{what} is not supported; supported formats are {', '.join(sorted(SUPPORTED_FORMATS))}",
    )


def sniff_format(data: bytes) -> str:
    """The format by the bytes, never by a file name; raises for anything unsupported."""
    if not data:
        raise ImageRejected(RejectReason.EMPTY, "the payload is empty")
    for magic, offset, fmt in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if fmt == "WEBP" and data[:4] != b"RIFF":
                break
            return fmt
    if (iso := _iso_bmff_format(data)) is not None:
        if iso not in SUPPORTED_FORMATS:
            raise _unsupported(iso)
        return iso
    if data.startswith(_OTHER_IMAGE_MAGIC):
        raise _unsupported("this image format")
    raise ImageRejected(
        RejectReason.NOT_AN_IMAGE,
        f"the bytes are not an image in a supported format ({', '.join(sorted(SUPPORTED_FORMATS))})",
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DecodeLimits:
    """What one photo may cost to decode.

    max_scans: libjpeg decodes every scan of a progressive JPEG in full; encoders write about
    10 (libjpeg) to 20 (mozjpeg), so 100 leaves room while bounding the work (libjpeg-turbo's
    own TurboJPEG scan limit, added after its issue #284, is 500).
    max_aspect: long side over short side; 20 is past any panorama a phone takes of a shelf.
    """

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_scans: int = 100
    max_aspect: float = 20.0


def jpeg_scan_count(data: bytes) -> int:
    """How many scans (SOS markers) a JPEG has, without decoding it.

    Walks the marker segments up to the first scan; after it, every 0xFFDA is a marker, since
    entropy-coded data stuffs each 0xFF with 0x00 (an APPn segment between scans could make
    this over-count, which only errs towards refusing).
    """
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 0  # not a marker where one must be: let the decoder call it corrupt
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return 1 + data.count(b"\xff\xda", pos + 2)
        if marker in (0xD9,) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


def check_shape(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise ImageRejected(
            RejectReason.TOO_MANY_PIXELS,
            f"{width}x{height} is over the limit of {limits.max_pixels} pixels",
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise ImageRejected(
            RejectReason.DEGENERATE_SHAPE,
            f"{width}x{height} is not a photo of a product: the long side may be at most "
            f"{limits.max_aspect:g} times the short side",
        )


def open_checked(data: bytes, limits: DecodeLimits) -> tuple[Image.Image, str]:
    """Open without decoding pixels, after the byte, format and pixel-count checks."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            RejectReason.TOO_LARGE, f"{len(data)} bytes is over the limit of {limits.max_bytes}"
        )
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(RejectReason.CORRUPT, f"cannot read the {fmt} header: {exc}") from exc
    check_shape(*image.size, limits)
    if fmt == "JPEG" and (scans := jpeg_scan_count(data)) > limits.max_scans:
        raise ImageRejected(
            RejectReason.TOO_COMPLEX,
            f"a JPEG with {scans} scans (at most {limits.max_scans}) costs too much to decode; "
            f"re-save it with a standard encoder",
        )
    return image, fmt


def decode_rgb(image: Image.Image, *, reduce_to: int | None = None,
               shrink_to: int | None = None) -> Image.Image:
    """Decode fully (truncated data fails here), convert to 8-bit sRGB (`colour.to_srgb8`:
    ICC profile, bit depth, transparency, mode), apply the EXIF orientation; returns RGB.

    `reduce_to` lets JPEG decode at 1/2, 1/4 or 1/8 scale when the target is that small:
    the cheapest resize is the one the decoder never has to do. `shrink_to` (capture, which
    stores at most that long side anyway) shrinks the decoded pixels to it before the colour
    conversion, so an ICC transform runs on a fraction of a phone photo's pixels.
    Raises `ImageRejected(CORRUPT)` for damaged pixels only; unreadable metadata is ignored.
    """
    try:
        if reduce_to and image.format == "JPEG":
            image.draft(image.mode, (reduce_to, reduce_to))  # scale only; colour comes next
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(RejectReason.CORRUPT, f"the image data is damaged: {exc}") from exc
    turn = orientation(image)  # read off the source: the converted copy has no EXIF
    source = image
    if shrink_to and max(image.size) > shrink_to and image.info.get("icc_profile"):
        source = resize_long_side(image, shrink_to)
        source.info = dict(image.info)  # the profile travels with the pixels
    try:
        rgb = to_srgb8(source)
    except (OSError, ValueError) as exc:
        raise ImageRejected(RejectReason.CORRUPT, f"the pixels cannot be read: {exc}") from exc
    return rgb.transpose(turn) if turn is not None else rgb


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    width, height = image.size
    scale = long_side / max(width, height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Bilinear with Pillow's area-aware support is as clean as bicubic when shrinking,
    # at half the cost.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Re-encode from pixels only: no EXIF, XMP, ICC profile, comments or maker notes survive."""
    out = io.BytesIO()
    # Pillow copies `info["comment"]` into the output unless told otherwise.
    image.save(
        out, format="JPEG", quality=quality, optimize=False, exif=b"", icc_profile=None,
        comment=b"",
    )
    return out.getvalue()


_METADATA_KEYS = ("exif", "icc_profile", "xmp", "comment", "photoshop", "XML:com.adobe.xmp")


def metadata_found(data: bytes) -> list[str]:
    """Names of metadata blocks still present in an encoded image (the core's re-check)."""
    with Image.open(io.BytesIO(data)) as image:
        found = [key for key in _METADATA_KEYS if image.info.get(key)]
        if image.getexif():
            found.append("exif-tags")
        applist = getattr(image, "applist", [])
        found.extend(
            marker for marker, payload in applist if marker == "APP1" or payload.startswith(b"Exif")
        )
    return sorted(set(found))


def dhash(image: Image.Image, bits: int = 8) -> int:
    """64-bit difference hash: near-identical photos differ in a few bits only."""
    gray = image.convert("L").resize((bits + 1, bits), Image.Resampling.BILINEAR)
    pixels = gray.tobytes()
    value = 0
    for row in range(bits):
        line = pixels[row * (bits + 1) : (row + 1) * (bits + 1)]
        for col in range(bits):
            value = (value << 1) | (line[col] > line[col + 1])
    return value


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
