"""MS-COCO instances JSON: multi-label annotation from object categories.

Layout: annotations/instances_{train,val}{2014,2017}.json and image folders {train,val}{year}/.
The literature trains on train and reports on val, so val becomes our "test" split and a
validation split is carved from train. Images with no object are legal (no label).
"""

from __future__ import annotations

import json
from pathlib import Path

from tagcap.data.readers.common import check_records, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def _year(root: Path) -> str | None:
    for year in ("2017", "2014"):
        if (root / "annotations" / f"instances_train{year}.json").is_file():
            return year
    return None


def detect(root: Path) -> bool:
    return _year(root) is not None


def read(root: Path) -> AnnotationDataset:
    year = _year(root)
    if year is None:
        raise DataError(root, "no annotations/instances_train{2014,2017}.json")
    labels: list[str] | None = None
    splits = {}
    for coco_split, our_split in (("train", "train"), ("val", "test")):
        path = root / "annotations" / f"instances_{coco_split}{year}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}", f"malformed JSON: {e.msg}") from None
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        if labels is None:
            labels = names
        elif names != labels:
            raise DataError(path, "its categories differ from the training file's")
        by_id = {c["id"]: c["name"] for c in cats}
        per_image: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
        for ann in data.get("annotations", []):
            if ann["category_id"] not in by_id:
                raise DataError(f"{path} annotation {ann.get('id')}", f"unknown category id {ann['category_id']}")
            if ann["image_id"] not in per_image:
                raise DataError(f"{path} annotation {ann.get('id')}", f"unknown image id {ann['image_id']}")
            per_image[ann["image_id"]].append(by_id[ann["category_id"]])
        folder = root / f"{coco_split}{year}"
        records = []
        for img in data["images"]:
            name = img["file_name"]
            labs = tuple(dict.fromkeys(per_image[img["id"]]))
            records.append(Record(name, resolve_image(folder, name, f"{path} image {img['id']}"), labs))
        splits[our_split] = check_records(records, labels, str(path))
    return AnnotationDataset(name=f"coco{year}", root=root, format="coco", labels=labels or [], splits=splits)
