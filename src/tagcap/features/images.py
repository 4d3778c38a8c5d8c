"""Decoding and preprocessing: one place, so training, caching, predict and serve see the same pixels."""

from __future__ import annotations

import errno
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tagcap.errors import DataError, ImageTooLargeError

try:  # HEIC / HEIF (phones' photos) through libheif; without the package those files are "not an image"
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - a dependency, but decoding everything else needs no libheif
    pass

# Decompression-bomb guard: PIL warns above its default; we refuse clearly instead.
MAX_PIXELS = 50_000_000
# Pixels being decoded at once in this process, by every thread of every entry point (predict, index,
# extract, serve, the API): a folder or a request of large images decodes them a budget's worth at a
# time instead of all at once, so that memory stays bounded whatever arrives.
DECODE_BUDGET = MAX_PIXELS
KEEP = 2  # with `reduce_to`, a decoded image larger than KEEP x reduce_to on its shorter side is shrunk


class _PixelBudget:
    def __init__(self, capacity: int):
        self.capacity, self.used, self.cond = capacity, 0, threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = min(max(pixels, 1), self.capacity)  # one image larger than the budget runs alone
        with self.cond:
            self.cond.wait_for(lambda: self.used + pixels <= self.capacity)
            self.used += pixels
        try:
            yield
        finally:
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()


decoding = _PixelBudget(DECODE_BUDGET)


def check_size(width: int, height: int, where, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image with no pixels (nothing to tag: a model would still answer confidently) or
    more than `max_pixels` (a decompression bomb, or an array too large to convert)."""
    if width <= 0 or height <= 0:
        raise DataError(where, f"an empty image ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageTooLargeError(where, f"image is {width}x{height}, over the {max_pixels:,} pixel limit")


def shrink(img: Image.Image, reduce_to: int | None) -> Image.Image:
    """An image much larger than the models' input shrunk by a whole factor (box filter), keeping at
    least KEEP x `reduce_to` pixels on its shorter side: what is held until a batch runs stays small."""
    if reduce_to:
        factor = min(img.size) // (KEEP * reduce_to)
        if factor >= 2:
            return img.reduce(factor)
    return img


def load_image(path, name: str | None = None, max_pixels: int = MAX_PIXELS, reduce_to: int | None = None) -> Image.Image:
    """Open an image by its content (never its name), apply EXIF rotation, return RGB.

    `path` is a file path or a binary file object (an upload); `name` is what errors call it.
    `reduce_to`: where the format can decode at a reduced scale (JPEG's DCT scaling, `draft`), decode
    no larger than needed for a `reduce_to`-pixel side, which is several times faster for large photos;
    any other format is decoded whole and then shrunk (`shrink`). Decoding waits for its share of the
    process's pixel budget (`decoding`), so many large images never decode all at once.

    Any failure to decode this one file, whatever the decoder raises (Pillow plugins raise OSError,
    ValueError, SyntaxError, NotImplementedError, struct.error, IndexError, ... on hostile headers),
    is a `DataError` naming the file: one bad file never costs the others."""
    if not hasattr(path, "read"):
        path = Path(path)
    where = name or path
    try:
        with Image.open(path) as img:
            check_size(img.width, img.height, where, max_pixels)
            if reduce_to and img.format == "JPEG" and min(img.size) >= 2 * reduce_to:
                img.draft("RGB", (reduce_to, reduce_to))  # DCT scaling: decodes at 1/2, 1/4 or 1/8, not below
            with decoding.hold(img.width * img.height):
                img.seek(0)  # first frame of an animation
                ImageOps.exif_transpose(img, in_place=True)  # decodes; no copy where there is nothing to turn
                return shrink(img if img.mode == "RGB" else to_rgb(img), reduce_to)  # (convert copies RGB too)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(where, "file not found") from None
    except PermissionError:
        raise DataError(where, "permission denied") from None
    except IsADirectoryError:
        raise DataError(where, "a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(where, f"image over the {max_pixels:,} pixel limit ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(where, "empty file" if _is_empty(path) else
                        "not an image (its content is no image format we can decode, whatever its name)") from None
    except MemoryError:
        raise DataError(where, "decoding it needs more memory than there is") from None
    except Exception as e:  # noqa: BLE001  -- any decoder failure is this file's, see the docstring
        detail = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.errno == errno.ELOOP:
            detail = "a symbolic link loop"
        raise DataError(where, f"cannot decode image: {detail}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB as a person sees it: transparency over white, 16-bit scaled to 8, CMYK converted."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        # 16-bit samples span 0..65535 (an 8-bit value v is stored as 257 v); wider integer or float
        # images have no fixed range, so theirs is taken from the image
        scale = 1.0 if top <= 255 and img.mode in ("I", "F") else 65535.0 / 255 if top <= 65535 else top / 255
        return Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _is_empty(source) -> bool:
    try:
        if hasattr(source, "getbuffer"):
            return source.getbuffer().nbytes == 0
        return Path(source).stat().st_size == 0
    except (OSError, TypeError):
        return False


def preprocess(img: Image.Image, size: int, mean, std) -> np.ndarray:
    """Resize to size x size (no crop: a crop would cut away labelled objects), normalise, CHW float32."""
    img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
