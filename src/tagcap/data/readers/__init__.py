"""Readers, one module per on-disk format; all return an AnnotationDataset of Records.

`detect_format` looks at a folder's files; `read_dataset` reads it and, where the format has
no validation split, carves one from train with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

from tagcap.data.readers.common import ALLOW_OUTSIDE
from tagcap.data.records import AnnotationDataset, carve_validation
from tagcap.data.readers import (coco, coco_captions, csv_folder, flickr8k, flickr8k_nouns, json_samples, karpathy,
                                 list_annot, tagprop)
from tagcap.errors import DataError

# Order matters: the first format whose `detect` accepts the folder wins.
FORMATS = {
    "json": json_samples,
    "tagprop": tagprop,
    "list-annot": list_annot,
    "coco": coco,
    "csv": csv_folder,
    "flickr8k-nouns": flickr8k_nouns,  # never detected: Flickr8k's folder is read as captions unless asked
}
# Caption formats are looked for first when the task is captioning (a COCO folder holds both kinds).
CAPTION_FORMATS = {
    "flickr8k": flickr8k,
    "karpathy": karpathy,
    "coco-captions": coco_captions,
}
ALL_FORMATS = {**FORMATS, **CAPTION_FORMATS}


def detect_format(root: str | Path, task: str = "annotation") -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "not a directory")
    order = {**CAPTION_FORMATS, **FORMATS} if task == "caption" else FORMATS
    for name, module in order.items():
        if module.detect(root):
            return name
    raise DataError(root, "no known dataset format found (expected train.json/test.json, "
                    "*_list.txt + *_annot.mat, *_list.txt + *_annot.txt, annotations/instances_*.json, "
                    "or train.csv/test.csv; for captions Flickr8k.token.txt, dataset_*.json, "
                    "annotations/captions_*.json); pass --format to say which")


def read_dataset(root: str | Path, fmt: str | None = None, val_fraction: float = 0.1,
                 seed: int = 0, task: str = "annotation", allow_outside: bool | None = None) -> AnnotationDataset:
    """Read a dataset folder. `allow_outside`: accept image paths that leave the folder (`../x.jpg`,
    absolute paths), which are refused by default since a dataset file should not reach elsewhere
    (None: as `common.ALLOW_OUTSIDE` says, which the CLI's --allow-outside-paths sets)."""
    root = Path(root).resolve()
    fmt = fmt or detect_format(root, task)
    if fmt not in ALL_FORMATS:
        raise DataError(root, f"unknown format {fmt!r}; known: {', '.join(ALL_FORMATS)}")
    token = ALLOW_OUTSIDE.set(ALLOW_OUTSIDE.get() if allow_outside is None else allow_outside)
    try:
        dataset = ALL_FORMATS[fmt].read(root)
    finally:
        ALLOW_OUTSIDE.reset(token)
    return carve_validation(dataset, fraction=val_fraction, seed=seed)
