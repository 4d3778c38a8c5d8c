"""Karpathy's caption splits, `dataset_{coco,flickr8k,flickr30k}.json`.

`{"images": [{"filename", "filepath"?, "split": train|restval|val|test, "sentences": [{"raw"}]}]}`;
`restval` joins train, as in every paper that uses these splits. Images are looked for under
`<root>/<filepath>/`, `<root>/images/` and `<root>/`.
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import check_records, read_json
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def _file(root: Path) -> Path | None:
    found = sorted(root.glob("dataset_*.json"))
    return found[0] if found else None


def detect(root: Path) -> bool:
    return _file(root) is not None


def _find_image(root: Path, entry: dict, where: str) -> Path:
    name = entry["filename"]
    for folder in (root / entry.get("filepath", ""), root / "images", root):
        if (folder / name).is_file():
            return folder / name
    raise DataError(where, f"image {name!r} not found under {root}")


def read(root: Path) -> AnnotationDataset:
    path = _file(root)
    if path is None:
        raise DataError(root, "no dataset_*.json")
    data = read_json(path)
    splits: dict[str, list[Record]] = {}
    for i, entry in enumerate(data.get("images", [])):
        where = f"{path} images[{i}]"
        try:
            split = SPLITS[entry["split"]]
            caps = tuple(s["raw"].strip() for s in entry["sentences"] if s.get("raw", "").strip())
            key = f"{entry.get('filepath', '')}/{entry['filename']}".lstrip("/")
        except (KeyError, TypeError) as e:
            raise DataError(where, f"missing or unexpected field {e}") from None
        if not caps:
            raise DataError(where, f"image {entry['filename']!r} has no caption")
        splits.setdefault(split, []).append(Record(key, _find_image(root, entry, where), (), caps))
    if "train" not in splits:
        raise DataError(path, "no training images")
    splits = {k: check_records(v, [], str(path)) for k, v in splits.items()}
    name = path.stem.removeprefix("dataset_")
    return AnnotationDataset(name=f"karpathy-{name}", root=root, format="karpathy", labels=[], splits=splits)
