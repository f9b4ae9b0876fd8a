"""What each synthetic product looks like (see `synthetic` for the photos of it).

Each synthetic product has a fixed visual identity (package shape, two colours, a patterned
label band, a pseudo-brand), drawn once and cached as a sprite. Identity features are spread on
purpose (shapes cycle, patterns cycle per shape, hues are laid out so that look-alikes stay
apart) so that a classifier on generic ImageNet embeddings separates products.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Shape = Literal["box", "bottle", "can", "fruit"]
Pattern = Literal["stripes", "dots", "checks", "zigzag", "diagonal"]

SHAPES: tuple[Shape, ...] = ("box", "bottle", "can", "fruit")
PATTERNS: tuple[Pattern, ...] = ("stripes", "dots", "checks", "zigzag", "diagonal")

# Coarse classes, two per shape, so that consecutive products fall in distinct coarse classes
# (index i -> shape i % 4, category (i // 4) % 2 of that shape).
CATEGORIES: tuple[tuple[str, Shape], ...] = (
    ("Cereal", "box"),
    ("Juice", "bottle"),
    ("Soda", "can"),
    ("Apple", "fruit"),
    ("Tea", "box"),
    ("Water", "bottle"),
    ("Soup", "can"),
    ("Citrus", "fruit"),
)

# Two syllables out of 24 give 576 distinct brands before a numeric suffix is needed.
_SYLLABLES: tuple[str, ...] = tuple(
    "ZU KO MI RA VEL NO TA LUX BO FI SAN DO PE GRO LI MA XO NU ORA KI SOL VI TE BRI".split()
)
_PATTERN_WORDS: dict[str, str] = {
    "stripes": "stripes",
    "dots": "dots",
    "checks": "a check pattern",
    "zigzag": "zigzag lines",
    "diagonal": "diagonal stripes",
}
_GOLDEN = 0.6180339887498949
_CANVAS = 512  # sprites are drawn at 2x and downsampled once: cheap anti-aliasing
_SPRITE = 256


@dataclass(frozen=True)
class SyntheticProductStyle:
    """The fixed visual identity of one synthetic product."""

    index: int
    shape: Shape
    category: str
    category_id: int
    brand: str
    main_rgb: tuple[int, int, int]
    secondary_rgb: tuple[int, int, int]
    pattern: Pattern
    aspect: float  # body width / height, so same-shape products also differ in silhouette

    @property
    def name(self) -> str:
        return f"{self.brand.title()} {self.category}"

    def describe(self) -> str:
        """One human sentence, used as the product description in the synthetic catalogue."""
        main = _colour_name(self.main_rgb)
        article = "an" if main[0] in "aeiou" else "a"
        return (
            f"{self.name}: {article} {main} {self.shape} with a {_colour_name(self.secondary_rgb)} "
            f"label with {_PATTERN_WORDS[self.pattern]} (procedurally generated demo product)."
        )


def seeded_rng(*key: int) -> np.random.Generator:
    if any(k < 0 for k in key):
        raise ValueError(f"synthetic indices and seed must be >= 0, got {key}")
    return np.random.default_rng(list(key))


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _colour_name(rgb: tuple[int, int, int]) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    names = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "red")
    edges = (0.04, 0.11, 0.19, 0.45, 0.54, 0.72, 0.81, 0.96, 1.01)
    return next(n for n, e in zip(names, edges, strict=True) if h < e)


def _brand(index: int, seed: int) -> str:
    n = len(_SYLLABLES)
    # 97 is coprime with 576, so this is a permutation of the first 576 indices:
    # unique brands without a lookup table, shuffled by the seed.
    code = (index * 97 + seed * 31) % (n * n)
    brand = _SYLLABLES[code // n] + _SYLLABLES[code % n]
    return brand if index < n * n else f"{brand}{index // (n * n) + 1}"


@lru_cache(maxsize=1024)
def product_style(product_index: int, *, seed: int = 0) -> SyntheticProductStyle:
    """The identity of product `product_index` in the catalogue generated from `seed`."""
    rng = seeded_rng(seed, product_index, 1)
    shape = SHAPES[product_index % len(SHAPES)]
    category_id = product_index % len(SHAPES) + len(SHAPES) * ((product_index // len(SHAPES)) % 2)
    # Hue layout: a quarter turn per shape, a fifth per pattern, and golden-ratio steps for
    # each further round of (shape, pattern) combinations. Consecutive products thus get
    # well-spread hues, and products sharing shape and pattern stay >= 0.14 turns apart for
    # the first 80 products.
    k, shape_no = divmod(product_index, len(SHAPES))
    rounds, pattern_no = divmod(k, len(PATTERNS))
    hue = (seeded_rng(seed, 0).random() + shape_no * 0.25 + pattern_no * 0.2 + rounds * _GOLDEN) % 1.0
    main = hsv(hue, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    # The secondary colour is either a contrasting hue or near-white / near-black, which
    # gives the label band strong edges that ImageNet features pick up.
    kind = rng.integers(3)
    if kind == 0:
        secondary = hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    elif kind == 1:
        secondary = hsv(hue, 0.08, 0.97)
    else:
        secondary = hsv(hue + 0.5, 0.5, 0.18)
    return SyntheticProductStyle(
        index=product_index,
        shape=shape,
        category=CATEGORIES[category_id][0],
        category_id=category_id,
        brand=_brand(product_index, seed),
        main_rgb=main,
        secondary_rgb=secondary,
        pattern=PATTERNS[pattern_no],
        aspect=float(rng.uniform(0.55, 0.8)),
    )


# --- sprite: the product itself, drawn once per style --------------------------------------


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (25, 25, 30) if lum > 140 else (245, 245, 240)


def _pattern_layer(size: tuple[int, int], style: SyntheticProductStyle) -> Image.Image:
    """The label band's pattern over the full canvas; callers mask it to the band."""
    w, h = size
    img = Image.new("RGB", size, style.secondary_rgb)
    draw = ImageDraw.Draw(img)
    ink = style.main_rgb if style.pattern in ("dots", "checks") else _contrast(style.secondary_rgb)
    step = 36 + 8 * (style.index % 3)
    if style.pattern == "stripes":
        for x in range(0, w, step):
            draw.rectangle((x, 0, x + step // 2 - 1, h), fill=ink)
    elif style.pattern == "dots":
        r = step // 4
        for y in range(0, h + step, step):
            for x in range((y // step % 2) * step // 2, w + step, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    elif style.pattern == "checks":
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    elif style.pattern == "zigzag":
        for y in range(-step, h + step, step):
            pts = [
                (x, y + (step // 3 if (x // (step // 2)) % 2 else 0)) for x in range(0, w + step, step // 2)
            ]
            draw.line(pts, fill=ink, width=step // 5)
    else:  # diagonal
        for x in range(-h, w, step):
            draw.line((x, h, x + h, 0), fill=ink, width=step // 3)
    return img


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's embedded font: no dependency on fonts installed on the machine.
    return ImageFont.load_default(size=size)


def _draw_brand(img: Image.Image, style: SyntheticProductStyle, centre: tuple[int, int], width: int) -> None:
    """A plate with the brand name: readable "text" is a strong cue for ImageNet features."""
    draw = ImageDraw.Draw(img)
    size = 80
    while size > 12:
        font = _font(size)
        left, top, right, bottom = draw.textbbox((0, 0), style.brand, font=font)
        if right - left <= width * 0.8:
            break
        size -= 4
    tw, th = right - left, bottom - top
    cx, cy = centre
    pad = max(6, th // 3)
    plate = (cx - tw // 2 - pad, cy - th // 2 - pad, cx + tw // 2 + pad, cy + th // 2 + pad)
    plate_fill = _contrast(style.main_rgb)
    draw.rounded_rectangle(plate, radius=pad, fill=plate_fill)
    draw.text((cx - tw // 2 - left, cy - th // 2 - top), style.brand, font=font, fill=style.main_rgb)


def _shade(img: Image.Image, mask: Image.Image, body: tuple[int, int, int, int], kind: str) -> Image.Image:
    """Fake 3D lighting inside `mask`: cylindrical for bottles/cans, spherical for fruit."""
    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = body
    xs = (np.arange(w, dtype=np.float32) - (x0 + x1) / 2) / max(1.0, (x1 - x0) / 2)
    ys = (np.arange(h, dtype=np.float32) - (y0 + y1) / 2) / max(1.0, (y1 - y0) / 2)
    if kind == "sphere":
        d2 = xs[None, :] ** 2 + ys[:, None] ** 2
        light = 0.55 + 0.55 * np.sqrt(np.clip(1 - d2, 0, 1))
        spec = np.exp(-((xs[None, :] + 0.35) ** 2 + (ys[:, None] + 0.4) ** 2) / 0.03)
    else:
        light = np.broadcast_to(0.6 + 0.5 * np.sqrt(np.clip(1 - xs**2, 0, 1)), (h, w))
        spec = np.broadcast_to(np.exp(-((xs + 0.45) ** 2) / 0.01), (h, w))
    shaded = arr * light[..., None] + 90 * spec[..., None]
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255
    out = arr * (1 - m) + np.clip(shaded, 0, 255) * m
    return Image.fromarray(out.astype(np.uint8))


def _body(
    style: SyntheticProductStyle,
) -> tuple[Image.Image, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Silhouette mask, body box and label-band box of the product on the canvas."""
    c = _CANVAS
    mask = Image.new("L", (c, c), 0)
    draw = ImageDraw.Draw(mask)
    cx = c // 2
    if style.shape == "box":
        bw, bh = int(c * 0.8 * style.aspect), int(c * 0.8)
        body = (cx - bw // 2, c // 2 - bh // 2 + 10, cx + bw // 2, c // 2 + bh // 2 + 10)
        draw.rectangle(body, fill=255)
        band = (body[0], body[1] + bh * 2 // 5, body[2], body[1] + bh * 2 // 3)
    elif style.shape == "bottle":
        bw, bh = int(c * 0.62 * style.aspect), int(c * 0.56)
        body = (cx - bw // 2, c - 40 - bh, cx + bw // 2, c - 40)
        draw.rounded_rectangle(body, radius=bw // 5, fill=255)
        neck_w = bw // 3
        top = body[1] - int(c * 0.22)
        draw.polygon(
            [
                (body[0], body[1] + bw // 5),
                (cx - neck_w // 2, top + 40),
                (cx + neck_w // 2, top + 40),
                (body[2], body[1] + bw // 5),
            ],
            fill=255,
        )
        draw.rectangle((cx - neck_w // 2, top, cx + neck_w // 2, top + 60), fill=255)
        band = (body[0], body[1] + bh // 5, body[2], body[1] + bh * 3 // 5)
    elif style.shape == "can":
        bw, bh = int(c * 0.85 * style.aspect), int(c * 0.7)
        body = (cx - bw // 2, c // 2 - bh // 2, cx + bw // 2, c // 2 + bh // 2)
        eh = bw // 6
        draw.rectangle((body[0], body[1] + eh // 2, body[2], body[3] - eh // 2), fill=255)
        draw.ellipse((body[0], body[1], body[2], body[1] + eh), fill=255)
        draw.ellipse((body[0], body[3] - eh, body[2], body[3]), fill=255)
        band = (body[0], body[1] + bh // 5, body[2], body[3] - bh // 5)
    else:  # fruit
        d = int(c * (0.55 + 0.25 * style.aspect))
        body = (cx - d // 2, c // 2 - d // 2 + 20, cx + d // 2, c // 2 + d // 2 + 20)
        draw.ellipse(body, fill=255)
        # The "label" of a fruit is a pattern over its skin (stripes, speckles...).
        band = body
    return mask, body, band


@lru_cache(maxsize=256)
def draw_sprite(style: SyntheticProductStyle) -> Image.Image:
    """The product drawn on a transparent canvas, with a soft contact shadow."""
    c = _CANVAS
    mask, body, band = _body(style)
    img = Image.new("RGB", (c, c), style.main_rgb)
    band_mask = Image.new("L", (c, c), 0)
    ImageDraw.Draw(band_mask).rectangle(band, fill=255)
    band_mask = Image.fromarray(np.minimum(np.asarray(band_mask), np.asarray(mask)))
    if style.shape == "fruit":
        # Skin patterns are subtler than printed labels: blend them half-way.
        band_mask = band_mask.point(lambda v: v * 45 // 100)
    img.paste(_pattern_layer((c, c), style), (0, 0), band_mask)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = body
    cx = c // 2
    if style.shape == "box":
        draw.rectangle((x0, y0, x1, y0 + 18), fill=style.secondary_rgb)
        _draw_brand(img, style, (cx, (y0 + band[1]) // 2), x1 - x0)
    elif style.shape in ("bottle", "can"):
        _draw_brand(img, style, (cx, (band[1] + band[3]) // 2), x1 - x0)
    img = _shade(img, mask, body, "sphere" if style.shape == "fruit" else "cylinder")
    draw = ImageDraw.Draw(img)
    if style.shape == "box":
        # A darker side face and a lighter top face make the box read as 3D.
        depth = 34
        side = tuple(int(v * 0.6) for v in style.main_rgb)
        top = tuple(min(255, int(v * 1.15) + 20) for v in style.main_rgb)
        draw.polygon([(x1, y0), (x1 + depth, y0 - depth), (x1 + depth, y1 - depth), (x1, y1)], fill=side)
        draw.polygon([(x0, y0), (x0 + depth, y0 - depth), (x1 + depth, y0 - depth), (x1, y0)], fill=top)
        ImageDraw.Draw(mask).polygon(
            [(x1, y0), (x1 + depth, y0 - depth), (x1 + depth, y1 - depth), (x1, y1)], fill=255
        )
        ImageDraw.Draw(mask).polygon(
            [(x0, y0), (x0 + depth, y0 - depth), (x1 + depth, y0 - depth), (x1, y0)], fill=255
        )
    elif style.shape == "bottle":
        neck_w = (x1 - x0) // 3
        neck_top = y0 - int(c * 0.22)
        cap = (cx - neck_w // 2 - 6, neck_top - 38, cx + neck_w // 2 + 6, neck_top + 4)
        draw.rounded_rectangle(cap, radius=8, fill=style.secondary_rgb)
        ImageDraw.Draw(mask).rounded_rectangle(cap, radius=8, fill=255)
    elif style.shape == "can":
        eh = (x1 - x0) // 6
        draw.ellipse((x0, y0, x1, y0 + eh), fill=(200, 200, 205), outline=(120, 120, 125), width=4)
        draw.ellipse((x0 + 14, y0 + 6, x1 - 14, y0 + eh - 6), fill=(170, 170, 178))
    else:
        stem = (cx - 6, y0 - 34, cx + 6, y0 + 14)
        draw.rectangle(stem, fill=(90, 60, 30))
        leaf = (cx + 4, y0 - 40, cx + 74, y0 - 6)
        draw.ellipse(leaf, fill=(60, 140, 50))
        ImageDraw.Draw(mask).rectangle(stem, fill=255)
        ImageDraw.Draw(mask).ellipse(leaf, fill=255)
        # A price-look-up sticker with the brand, as on real supermarket fruit.
        _draw_brand(img, style, (cx - (x1 - x0) // 6, (y0 + y1) // 2 + (y1 - y0) // 6), (x1 - x0) // 2)
    rgba = img.convert("RGBA")
    rgba.putalpha(mask)
    # Contact shadow: a blurred dark ellipse under the product, drawn behind it.
    shadow = Image.new("L", (c, c), 0)
    ImageDraw.Draw(shadow).ellipse((x0 - 10, y1 - 22, x1 + 40, y1 + 22), fill=150)
    shadow = shadow.filter(ImageFilter.GaussianBlur(12))
    out = Image.new("RGBA", (c, c), (0, 0, 0, 0))
    out.putalpha(shadow)
    out = Image.alpha_composite(out, rgba)
    return out.resize((_SPRITE, _SPRITE), Image.Resampling.LANCZOS)
