"""JSON samples: train.json / test.json (optional val.json) and an images/ folder.

Each file: {"labels": [...], "samples": [{"image_name": ..., "image_labels": [...]}]}
(the format of the Corel-5k, ESP Game and IAPR TC-12 releases of the seed repositories).
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import check_records, image_folder, read_json, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def detect(root: Path) -> bool:
    return (root / "train.json").is_file() and (root / "test.json").is_file()


def _load(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or "samples" not in data or "labels" not in data:
        raise DataError(path, 'expected an object with "labels" and "samples"')
    return data


def read(root: Path) -> AnnotationDataset:
    image_dir = image_folder(root)
    labels: list[str] | None = None
    splits = {}
    for split in ("train", "val", "test"):
        path = root / f"{split}.json"
        if not path.is_file():
            continue
        data = _load(path)
        if labels is None:
            labels = [str(x) for x in data["labels"]]
        elif [str(x) for x in data["labels"]] != labels:
            raise DataError(path, 'its "labels" list differs from train.json\'s')
        records = []
        for i, s in enumerate(data["samples"]):
            where = f"{path} sample {i}"
            if not isinstance(s, dict) or "image_name" not in s:
                raise DataError(where, 'expected {"image_name": ..., "image_labels": [...]}')
            name = str(s["image_name"])
            labs = s.get("image_labels", [])
            if not isinstance(labs, list):
                raise DataError(where, '"image_labels" must be a list')
            records.append(Record(name, resolve_image(image_dir, name, f"{where} ({name})"),
                                  tuple(str(x) for x in labs), where=where))
        splits[split] = check_records(records, labels, str(path))
    name = "corel5k" if (root / "corel5k_words.txt").is_file() else root.name.lower()
    return AnnotationDataset(name=name, root=root, format="json", labels=labels or [], splits=splits)
