"""List + annotation text: <name>_{train,test}_list.txt (an image path a line),
<name>_{train,test}_annot.txt (a 0/1 row a line, spaces or commas) and a label dictionary
(<name>_dict.txt, <name>_labels.txt or <name>_words.txt: a label a line, optionally with its
index). The MS-COCO / NUS-WIDE files of the Multi-order RNN release have this shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tagcap.data.readers.common import read_lines
from tagcap.data.readers.tagprop import read_list_splits
from tagcap.data.records import AnnotationDataset
from tagcap.errors import DataError

DICT_SUFFIXES = ("_dict.txt", "_labels.txt", "_words.txt")


def _prefix(root: Path) -> str | None:
    for annot in sorted(root.glob("*_train_annot.txt")):
        prefix = annot.name[: -len("_train_annot.txt")]
        if (root / f"{prefix}_train_list.txt").is_file():
            return prefix
    return None


def detect(root: Path) -> bool:
    return _prefix(root) is not None


def _read_dictionary(path: Path) -> list[str]:
    labels = []
    for n, line in enumerate(read_lines(path), 1):
        tokens = line.split()
        if len(tokens) == 2 and tokens[0].isdigit():
            tokens = tokens[1:]
        elif len(tokens) == 2 and tokens[1].isdigit():
            tokens = tokens[:1]
        if len(tokens) != 1:
            raise DataError(f"{path}:{n}", f"malformed line {line!r}: expected a label, or 'index label'")
        labels.append(tokens[0])
    return labels


def _read_matrix(path: Path, width: int) -> np.ndarray:
    rows = []
    for n, line in enumerate(read_lines(path), 1):
        tokens = re.split(r"[,\s]+", line)
        if not all(t in ("0", "1") for t in tokens):
            raise DataError(f"{path}:{n}", f"malformed line: expected 0/1 values, got {line[:60]!r}")
        if len(tokens) != width:
            raise DataError(f"{path}:{n}", f"{len(tokens)} values but the dictionary has {width} labels")
        rows.append([int(t) for t in tokens])
    return np.asarray(rows, dtype=np.uint8).reshape(len(rows), width)


def read(root: Path) -> AnnotationDataset:
    prefix = _prefix(root)
    if prefix is None:
        raise DataError(root, "no <name>_train_list.txt with <name>_train_annot.txt")
    dict_path = next((root / f"{prefix}{s}" for s in DICT_SUFFIXES if (root / f"{prefix}{s}").is_file()), None)
    if dict_path is None:
        raise DataError(root, f"no label dictionary: expected one of {[prefix + s for s in DICT_SUFFIXES]}")
    labels = _read_dictionary(dict_path)
    splits = read_list_splits(root, prefix, labels, "_annot.txt", lambda path: _read_matrix(path, len(labels)))
    return AnnotationDataset(name=prefix.lower(), root=root, format="list-annot", labels=labels, splits=splits)
