"""MS-COCO captions JSON: annotations/captions_{train,val}{2014,2017}.json, images in {train,val}{year}/.

As for COCO instances, the official val set is our "test" split and a validation split is carved
from train (for Karpathy's standard 5k/5k split, use his dataset_coco.json instead).
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import check_records, coco_by_image, coco_splits, coco_year, resolve_image
from tagcap.data.records import AnnotationDataset, Record


def detect(root: Path) -> bool:
    return coco_year(root, "captions") is not None


def read(root: Path) -> AnnotationDataset:
    splits = {}
    for our_split, path, data, folder in coco_splits(root, "captions"):
        per_image = coco_by_image(path, data, lambda ann: ann.get("caption", "").strip() or None)
        records = [Record(img["file_name"], resolve_image(folder, img["file_name"], f"{path} image {img['id']}"),
                          (), tuple(per_image[img["id"]]))
                   for img in data["images"] if per_image[img["id"]]]
        splits[our_split] = check_records(records, [], str(path))
    return AnnotationDataset(name=f"coco{coco_year(root, 'captions')}-captions", root=root, format="coco-captions",
                             labels=[], splits=splits)
