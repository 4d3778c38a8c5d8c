"""Readers, one module per on-disk format; all return an AnnotationDataset of Records.

`detect_format` looks at a folder's files; `read_dataset` reads it and, where the format has
no validation split, carves one from train with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.records import AnnotationDataset, carve_validation
from tagcap.data.readers import coco, csv_folder, json_samples, list_annot, tagprop
from tagcap.errors import DataError

# Order matters: the first format whose `detect` accepts the folder wins.
FORMATS = {
    "json": json_samples,
    "tagprop": tagprop,
    "list-annot": list_annot,
    "coco": coco,
    "csv": csv_folder,
}


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "not a directory")
    for name, module in FORMATS.items():
        if module.detect(root):
            return name
    raise DataError(root, "no known dataset format found (expected train.json/test.json, "
                    "*_list.txt + *_annot.mat, *_list.txt + *_annot.txt, annotations/instances_*.json, "
                    "or train.csv/test.csv); pass --format to say which")


def read_dataset(root: str | Path, fmt: str | None = None, val_fraction: float = 0.1,
                 seed: int = 0) -> AnnotationDataset:
    root = Path(root).resolve()
    fmt = fmt or detect_format(root)
    if fmt not in FORMATS:
        raise DataError(root, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    dataset = FORMATS[fmt].read(root)
    return carve_validation(dataset, fraction=val_fraction, seed=seed)
