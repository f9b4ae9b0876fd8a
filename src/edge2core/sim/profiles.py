"""ICC profiles for simulated photos (tests and benchmarks): never used by production code."""

from __future__ import annotations

import struct

from PIL import ImageCms


def swapped_primaries_profile(name: str = "Swap") -> bytes:
    """An RGB ICC profile equal to sRGB but with the red and green primaries swapped: a pixel
    (r, g, b) in it is (g, r, b) in sRGB, a right answer known without colour maths, and as
    cheap to apply as a phone's Display P3. Its description does not start with "sRGB", so the
    decoder does not skip it as sRGB."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    tags = {}
    for i in range(count):
        sig, offset, size = struct.unpack(">4sII", data[132 + 12 * i : 144 + 12 * i])
        tags[sig] = (offset, size)
    (r_off, r_size), (g_off, g_size) = tags[b"rXYZ"], tags[b"gXYZ"]
    red, green = bytes(data[r_off : r_off + r_size]), bytes(data[g_off : g_off + g_size])
    data[r_off : r_off + r_size], data[g_off : g_off + g_size] = green, red
    at = data.find("sRGB".encode("utf-16-be"))
    data[at : at + 8] = name[:4].ljust(4).encode("utf-16-be")
    return bytes(data)
