"""Small generated images whose right pixels are known, for the one decoding path.

Each case: (name, encoded bytes, expected RGB pixels at a few (x, y) positions, tolerance),
or an expected refusal reason. Everything is made here; no image files live in the repo.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge2core.common.colour import BACKGROUND
from edge2core.sim.profiles import swapped_primaries_profile


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: dict[tuple[int, int], tuple[int, int, int]]
    tolerance: int = 0


def _png(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return out.getvalue()


def gray16_gradient() -> Case:
    ramp = np.repeat(np.linspace(0, 65535, 32).astype(np.uint16), 8)[None, :].repeat(16, axis=0)
    data = _png(Image.fromarray(ramp))  # a 16-bit greyscale PNG
    expected = {(x, 0): (round(int(ramp[0, x]) * 255 / 65535),) * 3 for x in (4, 84, 164, 252)}
    return Case("gray16", data, expected)  # type: ignore[arg-type]


def rgba_cutout() -> Case:
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:4] = (200, 40, 10, 255)  # opaque product
    pixels[4:, :4] = (0, 0, 0, 0)  # transparent background (black underneath)
    pixels[4:, 4:] = (0, 0, 0, 128)  # half-transparent black
    half = tuple(round(c * 127 / 255) for c in BACKGROUND)
    return Case("rgba", _png(Image.fromarray(pixels, "RGBA")),
                {(0, 0): (200, 40, 10), (0, 7): BACKGROUND, (7, 7): half}, tolerance=1)


def palette_with_transparency() -> Case:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
    image.paste(0, (0, 0, 8, 8))
    return Case("palette", _png(image, transparency=0),
                {(0, 0): BACKGROUND, (15, 15): (10, 120, 230)})


def grey_alpha() -> Case:
    image = Image.new("LA", (16, 16), (90, 255))
    image.paste((0, 0), (0, 0, 8, 8))
    return Case("la", _png(image), {(0, 0): BACKGROUND, (15, 15): (90, 90, 90)})


def icc_swapped() -> Case:
    image = Image.new("RGB", (4, 4), (200, 60, 20))
    return Case("icc", _png(image, icc_profile=swapped_primaries_profile()),
                {(0, 0): (60, 200, 20)}, tolerance=2)


def bad_exif_png() -> Case:
    """Case 8: an eXIf chunk that is not TIFF; the pixels are sound."""
    image = Image.new("RGB", (4, 4), (30, 60, 90))
    return Case("bad-exif", _png(image, exif=b"this is not a TIFF header"), {(0, 0): (30, 60, 90)})


def out_of_range_orientation() -> Case:
    image = Image.new("RGB", (6, 4), (30, 60, 90))
    exif = Image.Exif()
    exif[0x0112] = 42
    out = io.BytesIO()
    image.save(out, "PNG", exif=exif.tobytes())
    return Case("orientation-42", out.getvalue(), {(5, 3): (30, 60, 90)})


def cmyk_jpeg() -> Case:
    """A CMYK JPEG (print workflows, some scanners): cyan-free, full magenta and yellow is red."""
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return Case("cmyk", out.getvalue(), {(8, 8): (255, 0, 0)}, tolerance=6)


def raw_profile_not_hex() -> Case:
    """A PNG text chunk 'Raw profile type exif' whose body is not hex (ImageMagick's format,
    broken): metadata we cannot read, sound pixels."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n      20\nthis is not hexadecimal at all!!")
    return Case("raw-profile", _png(Image.new("RGB", (8, 8), (10, 200, 90)), pnginfo=info),
                {(4, 4): (10, 200, 90)})


def cases() -> list[Case]:
    return [gray16_gradient(), rgba_cutout(), palette_with_transparency(), grey_alpha(),
            icc_swapped(), bad_exif_png(), out_of_range_orientation(), cmyk_jpeg(),
            raw_profile_not_hex()]
