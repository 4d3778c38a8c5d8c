"""Decoding and preprocessing: one place, so training, caching, predict and serve see the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tagcap.errors import DataError

# Decompression-bomb guard: PIL warns above its default; we refuse clearly instead.
MAX_PIXELS = 50_000_000


def load_image(path, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image by its content (never its name), apply EXIF rotation, return RGB.

    `path` is a file path or a binary file object (an upload); `name` is what errors call it."""
    if not hasattr(path, "read"):
        path = Path(path)
    where = name or path
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise DataError(where, f"image is {img.width}x{img.height}, over the {max_pixels:,} pixel limit")
            img.seek(0)  # first frame of an animation
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                background = Image.new("RGB", img.size, (255, 255, 255))
                rgba = img.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                return background
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                arr = arr / max(float(arr.max()), 1.0) * 255.0
                return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
            return img.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(where, "file not found") from None
    except Image.DecompressionBombError as e:
        raise DataError(where, f"image over the {max_pixels:,} pixel limit ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(where, "empty file" if _is_empty(path) else
                        "not an image (its content is no image format we can decode, whatever its name)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(where, f"cannot decode image: {e}") from None


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
