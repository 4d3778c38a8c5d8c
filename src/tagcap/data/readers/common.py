"""Checks every reader shares: image paths that exist, no duplicates, labels in the vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tagcap.data.records import Record
from tagcap.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_folder(root: Path) -> Path:
    """Where a dataset keeps its images: images/ when there is one, else the root itself."""
    return root / "images" if (root / "images").is_dir() else root


def resolve_image(folder: Path, name: str, where: str) -> Path:
    """The image file for `name` under `folder`; names without a suffix try the usual ones."""
    path = folder / name
    if path.is_file():
        return path
    if not Path(name).suffix:
        for suffix in IMAGE_SUFFIXES:
            if (candidate := folder / (name + suffix)).is_file():
                return candidate
    raise DataError(where, f"image {name!r} not found (looked for {path})")


def check_records(records: Iterable[Record], labels: list[str], source: str) -> list[Record]:
    """Reject duplicate images and labels outside the vocabulary, naming the entry."""
    known = set(labels)
    seen: set[str] = set()
    out = []
    for r in records:
        if r.key in seen:
            raise DataError(source, f"duplicate image {r.key!r}")
        seen.add(r.key)
        for lab in r.labels:
            if lab not in known:
                raise DataError(source, f"unknown label {lab!r} for image {r.key!r}")
        if len(set(r.labels)) != len(r.labels):
            r = Record(r.key, r.image, tuple(dict.fromkeys(r.labels)), r.captions)
        out.append(r)
    return out


def read_json(path: Path):
    """A JSON file; malformed JSON is a DataError naming the file, line and column."""
    import json

    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"malformed JSON: {e.msg} (column {e.colno})") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; a missing file is a DataError naming it."""
    if not path.is_file():
        raise DataError(path, "file not found")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def dataset_name(root: Path, prefix_hint: str | None = None) -> str:
    return (prefix_hint or root.name).lower()
