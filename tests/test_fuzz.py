"""Fuzzing the decoder entry point: thousands of mutated files of many formats, fixed seed. Whatever
the bytes, `load_image` returns an RGB image or raises `DataError` naming the file, and no file
takes more than a few seconds."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from tagcap.errors import DataError
from tagcap.features.images import load_image

FORMATS = {  # Pillow format: save options
    "JPEG": {"quality": 85}, "PNG": {}, "WEBP": {"quality": 80}, "TIFF": {}, "BMP": {}, "GIF": {}, "ICO": {},
    "DDS": {}, "PPM": {}, "TGA": {},
}
FILES_PER_FORMAT = 220  # 10 formats: 2,200 files
SECONDS_PER_FILE = 3.0


def _seed_images(fmt: str, rng: np.random.Generator) -> list[bytes]:
    out = []
    for mode, size in (("RGB", (40, 30)), ("RGBA", (17, 23)), ("L", (32, 32)), ("P", (24, 16))):
        arr = rng.integers(0, 255, (size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB")
        img = img.convert(mode) if mode in ("L", "P") else img
        buf = io.BytesIO()
        try:
            img.save(buf, fmt, **FORMATS[fmt])
        except (OSError, ValueError, KeyError):
            continue  # this format cannot store this mode
        out.append(buf.getvalue())
    assert out, fmt
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of the mutations a fuzzer makes: flipped bits, random bytes, header fields set to extremes,
    cut or repeated chunks, spliced garbage."""
    b = bytearray(data)
    kind = int(rng.integers(6))
    if kind == 0:  # flip a few bits anywhere
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite bytes in the header, where sizes and counts live
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(min(len(b), 128)))
            b[i] = int(rng.integers(256))
    elif kind == 2:  # a header field set to an extreme (0xFF.. or 0x00..)
        i = int(rng.integers(min(len(b), 64)))
        width = int(rng.integers(1, 5))
        b[i:i + width] = (b"\xff" if rng.random() < 0.5 else b"\x00") * width
    elif kind == 3:  # truncated
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == 4:  # a chunk repeated
        i, j = sorted(int(x) for x in rng.integers(len(b), size=2))
        b = b[:j] + b[i:j] + b[j:]
    else:  # random bytes spliced in
        i = int(rng.integers(len(b)))
        b = b[:i] + bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)) + b[i:]
    return bytes(b)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
# a damaged file makes Pillow warn about its metadata (hundreds in CI's log); what is tested is what follows
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
def test_mutated_files_never_escape_load_image(fmt, tmp_path):
    rng = np.random.default_rng(sorted(FORMATS).index(fmt))
    seeds = _seed_images(fmt, rng)
    decoded = refused = 0
    slowest = 0.0
    for n in range(FILES_PER_FORMAT):
        data = _mutate(seeds[n % len(seeds)], rng)
        path = tmp_path / f"case{n:04d}.jpg"  # the name lies about the format, as a user's files may
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            img = load_image(path)
        except DataError as e:
            assert str(path) in str(e)
            refused += 1
        else:
            assert img.mode == "RGB" and img.width > 0 and img.height > 0
            decoded += 1
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < SECONDS_PER_FILE, f"one {fmt} file took {slowest:.1f} s to decode or refuse"
    assert decoded + refused == FILES_PER_FORMAT
    assert refused > 0  # the mutations do break files: this is no test of clean inputs
