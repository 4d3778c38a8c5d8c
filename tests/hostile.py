"""Hostile and awkward image files, made on the fly: each names what a tagger must survive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(size=(48, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_jpeg() -> bytes:
    return _bytes(_photo(), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    data = _bytes(_photo((200, 150)), "JPEG", quality=95)
    return data[: len(data) // 2]


def png_with_alpha() -> bytes:
    img = _photo().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return _bytes(img, "PNG")


def grayscale_png() -> bytes:
    return _bytes(_photo().convert("L"), "PNG")


def cmyk_jpeg() -> bytes:
    return _bytes(_photo().convert("CMYK"), "JPEG")


def png_16bit() -> bytes:
    arr = (np.random.default_rng(1).integers(0, 65535, (32, 48))).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return _bytes(img, "PNG")


def huge_png() -> bytes:
    """20000 x 20000 pixels (400 million), a few hundred kB on disk: a decompression bomb."""
    return _bytes(Image.new("1", (20000, 20000)), "PNG")


def animated_gif() -> bytes:
    frames = [_photo(seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 48 x 32 with EXIF orientation 6 (rotate 90°): shown, and tagged, as 32 x 48."""
    img = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(img, "JPEG", exif=exif.tobytes())


def dds_named_jpeg() -> bytes:
    """A DDS file with a pixel format Pillow does not implement (its header says DXT2): Pillow raises
    NotImplementedError, not OSError, while reading the header."""
    data = bytearray(_bytes(_photo(), "DDS"))
    data[84:88] = b"DXT2"  # the FourCC of the pixel format
    data[80:84] = (4).to_bytes(4, "little")  # DDPF_FOURCC
    return bytes(data)


# name: (bytes maker, decodes?)  -- what every entry point must do with it
HOSTILE = {
    "zero_byte.jpg": (lambda: b"", False),
    "text_named.jpg": (lambda: b"this is not an image, whatever its name says\n", False),
    "truncated.jpg": (truncated_jpeg, False),
    "huge_20000x20000.png": (huge_png, False),
    "alpha.png": (png_with_alpha, True),
    "grayscale.png": (grayscale_png, True),
    "cmyk.jpg": (cmyk_jpeg, True),
    "sixteen_bit.png": (png_16bit, True),
    "animated.gif": (animated_gif, True),
    "exif_rotated.jpg": (exif_rotated_jpeg, True),
    "dds_named.jpg": (dds_named_jpeg, False),
}


def write_all(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (make, _) in HOSTILE.items():
        paths[name] = folder / name
        paths[name].write_bytes(make())
    return paths
