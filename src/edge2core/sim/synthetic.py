"""Procedural "product photos" for demos and tests on machines without the real dataset.

Each synthetic product has a fixed visual identity (package shape, two colours, a patterned
label band, a pseudo-brand) drawn once and cached as a sprite; every photo then places that
sprite on a fresh random shelf-like background with its own position, scale, rotation,
lighting, blur and JPEG quality. Identity features are spread on purpose (shapes cycle,
patterns cycle per shape, hues are laid out so that look-alikes stay apart) so that a
classifier on generic ImageNet embeddings separates products, while the per-photo variation
keeps it from memorising a single image.

Everything is deterministic in (product index, photo index, seed): the same arguments give
the same bytes, which keeps demos and tests reproducible.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from edge2core.sim.synthetic_products import (
    CATEGORIES,
    SyntheticProductStyle,
    draw_sprite,
    hsv,
    product_style,
    seeded_rng,
)

__all__ = ["CATEGORIES", "SyntheticProductStyle", "product_style", "render_photo"]


# --- photo: the sprite on a random shelf, with camera variation ----------------------------


def _low_res_ramp(rng: np.random.Generator, n: int) -> np.ndarray:
    """A linear ramp in [-0.5, 0.5] along a random direction, n x n."""
    angle = rng.uniform(0, 2 * np.pi)
    r = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    return r[None, :] * np.cos(angle) + r[:, None] * np.sin(angle)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A muted colour gradient with out-of-focus blotches and shelf edges.

    Gradient and blotches are low-frequency, so they are computed at 1/4 resolution and
    upsampled: full-resolution numpy work cost several ms a photo.
    """
    n = max(4, size // 4)
    c0 = np.array(hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.9)), np.float32)
    c1 = np.array(hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.9)), np.float32)
    t = np.clip(0.5 + _low_res_ramp(rng, n), 0, 1)[..., None]
    # Blotches are mostly brightness with a little colour, so they read as shelf clutter
    # without competing with the product's own colours.
    coarse = rng.normal(0, rng.uniform(8, 22), (6, 6, 1)) + rng.normal(0, 4, (6, 6, 3))
    blot = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (n, n), Image.Resampling.BICUBIC
    )
    low = c0 + (c1 - c0) * t + (np.asarray(blot, np.float32) - 128)
    bg = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(bg)
    for _ in range(rng.integers(1, 4)):
        # A shelf edge: a dark band with a thin highlight on its top edge.
        y = int(rng.uniform(0.05, 0.95) * size)
        grey = int(rng.integers(25, 90))
        draw.rectangle((0, y, size, y + int(rng.integers(4, 12))), fill=(grey, grey, grey + 5))
        draw.line((0, y - 1, size, y - 1), fill=(grey + 120, grey + 120, grey + 120), width=2)
    return bg


def _place(sprite: Image.Image, angle_deg: float, side: int) -> Image.Image:
    """Rotate and scale the sprite in one affine resampling (cheaper than rotate + resize)."""
    a = np.deg2rad(angle_deg)
    cos, sin = abs(np.cos(a)), abs(np.sin(a))
    out = max(8, int(np.ceil(side * (cos + sin))))
    k = sprite.width / side  # sprite pixels per output pixel
    ca, sa = np.cos(a), np.sin(a)
    # Output pixel (x, y) -> sprite pixel: undo the rotation about the centres, then scale.
    oc, ic = out / 2, sprite.width / 2
    coeffs = (k * ca, k * sa, ic - k * (ca * oc + sa * oc), -k * sa, k * ca, ic - k * (-sa * oc + ca * oc))
    return sprite.transform((out, out), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def _light(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Global gain, a colour cast, a directional fall-off and sensor noise, done in PIL.

    The light map is smooth, so it is computed at low resolution; PIL's multiply and add
    on uint8 images avoid the slow broadcasting of full-size float arrays.
    """
    size = photo.width
    n = max(4, size // 8)
    headroom = 1.5  # multiply() can only darken; the LUT below brightens back by this much
    gain = rng.uniform(0.75, 1.2)
    cast = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    fall = 1 + rng.uniform(0, 0.35) * _low_res_ramp(rng, n)
    light = np.clip(gain * fall[..., None] * cast / headroom, 0, 1) * 255
    light_img = Image.fromarray(light.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    lut = [min(255, round(v * headroom)) for v in range(256)] * 3
    photo = ImageChops.multiply(photo, light_img).point(lut)
    # Uniform noise from raw random bytes, mapped around 128 by a LUT: looks like Gaussian
    # sensor noise at this strength and is far cheaper to draw.
    amp = rng.uniform(2, 8)
    noise_lut = [round(128 + (v - 127.5) * amp / 127.5) for v in range(256)] * 3
    noise = Image.frombytes("RGB", (size, size), rng.bytes(size * size * 3)).point(noise_lut)
    return ImageChops.add(photo, noise, scale=1.0, offset=-128)


def render_photo(product_index: int, photo_index: int, *, seed: int = 0, size: int = 348) -> bytes:
    """A `size`x`size` JPEG photo of synthetic product `product_index`.

    Deterministic in (product_index, photo_index, seed); different photo indices give
    different photos of the same product.
    """
    style = product_style(product_index, seed=seed)
    rng = seeded_rng(seed, product_index, photo_index, 2)
    photo = _background(rng, size)

    side = int(size * 0.92 * rng.uniform(0.8, 1.2))
    sprite = _place(draw_sprite(style), rng.uniform(-10, 10), side)
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    cy = size / 2 + rng.uniform(-0.1, 0.1) * size
    photo.paste(sprite, (int(cx - sprite.width / 2), int(cy - sprite.height / 2)), sprite)
    photo = _light(photo, rng)

    blur = rng.uniform(0, 1.3)
    if blur > 0.3:
        # A single box-blur pass: visually close to a slight defocus, several times cheaper.
        photo = photo.filter(ImageFilter.BoxBlur(blur))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=int(rng.integers(80, 93)))
    return buf.getvalue()
