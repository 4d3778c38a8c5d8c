"""Checks every reader shares: image paths that exist, no duplicates, labels in the vocabulary."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Iterable

from tagcap.data.records import Record
from tagcap.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_folder(root: Path) -> Path:
    """Where a dataset keeps its images: images/ when there is one, else the root itself."""
    return root / "images" if (root / "images").is_dir() else root


# Image paths that leave the dataset folder (`../x.jpg`, `/etc/passwd`) are refused unless the
# user said they mean it (`--allow-outside-paths`, which `read_dataset` sets here while it reads).
ALLOW_OUTSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_outside", default=False)


def resolve_image(folder: Path, name: str, where: str) -> Path:
    """The image file for `name` under `folder`; names without a suffix try the usual ones.

    The check is on the name as written (not on resolved links, so an `images/` link to another disk
    is fine): an absolute name, or one whose `..` climbs out of `folder`, is refused naming `where`."""
    normal = os.path.normpath(name)
    if not ALLOW_OUTSIDE.get() and (os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep)):
        raise DataError(where, f"image path {name!r} leads outside the dataset folder {folder}; pass "
                               "--allow-outside-paths if that is meant")
    path = folder / name
    if path.is_file():
        return path
    if not Path(name).suffix:
        for suffix in IMAGE_SUFFIXES:
            if (candidate := folder / (name + suffix)).is_file():
                return candidate
    raise DataError(where, f"image {name!r} not found (looked for {path})")


def check_records(records: Iterable[Record], labels: list[str], source: str) -> list[Record]:
    """Reject duplicate images and labels outside the vocabulary, naming the entry (its line where known)."""
    known = set(labels)
    seen: dict[str, str] = {}
    out = []
    for r in records:
        where = r.where or source
        if r.key in seen:
            first = f" (first at {seen[r.key]})" if seen[r.key] else ""
            raise DataError(where, f"duplicate image {r.key!r}{first}")
        seen[r.key] = r.where
        for lab in r.labels:
            if lab not in known:
                raise DataError(where, f"unknown label {lab!r} for image {r.key!r}")
        if len(set(r.labels)) != len(r.labels):
            r = Record(r.key, r.image, tuple(dict.fromkeys(r.labels)), r.captions, r.where)
        out.append(r)
    return out


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a byte-order mark is fine); anything else is a DataError naming the file,
    the line and what the bytes look like."""
    if not path.is_file():
        raise DataError(path, "file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        guess = ""
        try:
            raw.decode("cp1252")
            guess = " It looks like Latin-1 / Windows-1252 text"
        except UnicodeDecodeError:
            pass
        raise DataError(f"{path}:{line}", f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}).{guess}; "
                                          "save the file as UTF-8") from None


def read_json(path: Path):
    """A JSON file; malformed JSON is a DataError naming the file, line and column."""
    import json

    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; a missing file is a DataError naming it."""
    if not path.is_file():
        raise DataError(path, "file not found")
    return [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]


def dataset_name(root: Path, prefix_hint: str | None = None) -> str:
    return (prefix_hint or root.name).lower()
