"""MS-COCO captions JSON: annotations/captions_{train,val}{2014,2017}.json, images in {train,val}{year}/.

As for COCO instances, the official val set is our "test" split and a validation split is carved
from train (for Karpathy's standard 5k/5k split, use his dataset_coco.json instead).
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.coco import annotation_year
from tagcap.data.readers.common import check_records, read_json, resolve_image
from tagcap.data.records import AnnotationDataset, Record
from tagcap.errors import DataError


def detect(root: Path) -> bool:
    return annotation_year(root, "captions") is not None


def read(root: Path) -> AnnotationDataset:
    year = annotation_year(root, "captions")
    if year is None:
        raise DataError(root, "no annotations/captions_train{2014,2017}.json")
    splits = {}
    for coco_split, our_split in (("train", "train"), ("val", "test")):
        path = root / "annotations" / f"captions_{coco_split}{year}.json"
        if not path.is_file():
            continue
        data = read_json(path)
        per_image: dict[int, list[str]] = {img["id"]: [] for img in data["images"]}
        for ann in data.get("annotations", []):
            if ann["image_id"] not in per_image:
                raise DataError(f"{path} annotation {ann.get('id')}", f"unknown image id {ann['image_id']}")
            if ann.get("caption", "").strip():
                per_image[ann["image_id"]].append(ann["caption"].strip())
        folder = root / f"{coco_split}{year}"
        records = [Record(img["file_name"], resolve_image(folder, img["file_name"], f"{path} image {img['id']}"),
                          (), tuple(per_image[img["id"]]))
                   for img in data["images"] if per_image[img["id"]]]
        splits[our_split] = check_records(records, [], str(path))
    return AnnotationDataset(name=f"coco{year}-captions", root=root, format="coco-captions", labels=[], splits=splits)
