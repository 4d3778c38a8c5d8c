"""MS-COCO instances JSON: multi-label annotation from object categories.

Layout: annotations/instances_{train,val}{2014,2017}.json and image folders {train,val}{year}/.
The literature trains on train and reports on val, so val becomes our "test" split and a
validation split is carved from train. Images with no object are legal (no label).
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import check_records, coco_by_image, coco_splits, coco_year, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def detect(root: Path) -> bool:
    return coco_year(root) is not None


def read(root: Path) -> AnnotationDataset:
    labels: list[str] | None = None
    splits = {}
    for our_split, path, data, folder in coco_splits(root, "instances"):
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
        if labels is None:
            labels = names
        elif names != labels:
            raise DataError(path, "its categories differ from the training file's")
        by_id = {c["id"]: c["name"] for c in cats}

        def category(ann: dict) -> str:
            if ann["category_id"] not in by_id:
                raise DataError(f"{path} annotation {ann.get('id')}", f"unknown category id {ann['category_id']}")
            return by_id[ann["category_id"]]

        per_image = coco_by_image(path, data, category)
        records = [Record(img["file_name"], resolve_image(folder, img["file_name"], f"{path} image {img['id']}"),
                          tuple(dict.fromkeys(per_image[img["id"]]))) for img in data["images"]]
        splits[our_split] = check_records(records, labels, str(path))
    return AnnotationDataset(name=f"coco{coco_year(root)}", root=root, format="coco", labels=labels or [],
                             splits=splits)
