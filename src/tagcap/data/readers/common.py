"""Checks every reader shares: image paths that exist, no duplicates, labels in the vocabulary."""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tagcap.data.records import Record
from tagcap.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif")


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


def records_from_matrix(ids: list[str], matrix: np.ndarray, labels: list[str], image_dir: Path,
                        list_path: Path, annot_path: Path) -> list[Record]:
    """Rows of a 0/1 matrix to records; shape errors name both files."""
    if matrix.ndim != 2 or matrix.shape[1] != len(labels):
        raise DataError(annot_path, f"label matrix has shape {matrix.shape}, expected {len(labels)} "
                        f"columns (one per label)")
    if matrix.shape[0] != len(ids):
        raise DataError(annot_path, f"{matrix.shape[0]} rows but {list_path.name} lists {len(ids)} images")
    bad = ~np.isin(matrix, (0, 1))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{annot_path} row {row + 1}", f"value {matrix[row, col]} in column {col + 1} is not 0 or 1")
    records = []
    for i, image_id in enumerate(ids):
        labs = tuple(labels[j] for j in np.flatnonzero(matrix[i]))
        records.append(Record(image_id, resolve_image(image_dir, image_id, f"{list_path}:{i + 1}"), labs,
                              where=f"{list_path}:{i + 1}"))
    return check_records(records, labels, str(list_path))


def read_list_splits(root: Path, prefix: str, labels: list[str], annot_suffix: str,
                     load_matrix: Callable[[Path], np.ndarray],
                     read_list: Callable[[Path], list[str]] = read_lines) -> dict[str, list[Record]]:
    """<prefix>_<split>_list.txt + <prefix>_<split><annot_suffix> for each split whose list exists."""
    splits = {}
    for split in ("train", "val", "test"):
        list_path, annot_path = root / f"{prefix}_{split}_list.txt", root / f"{prefix}_{split}{annot_suffix}"
        if list_path.is_file():
            splits[split] = records_from_matrix(read_list(list_path), load_matrix(annot_path), labels,
                                                image_folder(root), list_path, annot_path)
    return splits


def coco_year(root: Path, kind: str = "instances") -> str | None:
    """The year of `annotations/<kind>_train<year>.json` (kind: instances or captions), newest first."""
    for year in ("2017", "2014"):
        if (root / "annotations" / f"{kind}_train{year}.json").is_file():
            return year
    return None


def coco_splits(root: Path, kind: str) -> Iterator[tuple[str, Path, dict, Path]]:
    """(our split, annotation file, its JSON, image folder) per COCO `<kind>_{train,val}<year>.json`
    present: COCO's val is our test split (the literature reports on it; validation is carved from
    train). A DataError without a training file."""
    year = coco_year(root, kind)
    if year is None:
        raise DataError(root, f"no annotations/{kind}_train{{2014,2017}}.json")
    for coco_split, our_split in (("train", "train"), ("val", "test")):
        path = root / "annotations" / f"{kind}_{coco_split}{year}.json"
        if path.is_file():
            yield our_split, path, read_json(path), root / f"{coco_split}{year}"


def coco_by_image(path: Path, data: dict, value) -> dict[int, list]:
    """Per image id, `value(annotation)` of each of its annotations (None: skipped); an annotation of an
    image the file does not list is a DataError naming it."""
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        if ann["image_id"] not in per_image:
            raise DataError(f"{path} annotation {ann.get('id')}", f"unknown image id {ann['image_id']}")
        item = value(ann)
        if item is not None:
            per_image[ann["image_id"]].append(item)
    return per_image
