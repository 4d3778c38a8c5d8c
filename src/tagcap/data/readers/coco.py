"""MS-COCO instances JSON: multi-label annotation from object categories.

Layout: annotations/instances_{train,val}{2014,2017}.json and image folders {train,val}{year}/.
The literature trains on train and reports on val, so val becomes our "test" split and a
validation split is carved from train. Images with no object are legal (no label).
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import check_records, read_json, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def annotation_year(root: Path, kind: str = "instances") -> str | None:
    """The year of `annotations/<kind>_train<year>.json` (kind: instances or captions), newest first."""
    for year in ("2017", "2014"):
        if (root / "annotations" / f"{kind}_train{year}.json").is_file():
            return year
    return None


def detect(root: Path) -> bool:
    return annotation_year(root) is not None


def read(root: Path) -> AnnotationDataset:
    year = annotation_year(root)
    if year is None:
        raise DataError(root, "no annotations/instances_train{2014,2017}.json")
    labels: list[str] | None = None
    splits = {}
    for coco_split, our_split in (("train", "train"), ("val", "test")):
        path = root / "annotations" / f"instances_{coco_split}{year}.json"
        if not path.is_file():
            continue
        data = read_json(path)
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
